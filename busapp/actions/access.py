"""Who may do what: per-topic grants (with a reason and an optional expiry), role membership, and their expiry.

Every change here writes its audit entry in the same transaction. The grants are django-guardian's own
per-object permissions (``TopicUserGrant`` and ``TopicGroupGrant`` are its direct-foreign-key models); what
guardian cannot do, honour an expiry, ``busapp.permissions.topics_with_right`` does at every check.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from django.contrib.auth.models import Group, Permission, User
from django.db import transaction
from django.utils import timezone

from busapp.actions.reasons import reason_checked
from busapp.audit import Actor, actor_parts, audit_record
from busapp.errors import ActionRefusedError
from busapp.models import AuditAction, Topic, TopicGroupGrant, TopicUserGrant
from busapp.permissions import TOPIC_RIGHTS, Role
from busapp.selectors import RIGHT_RANK, Grant, Principal, grant_principal, principal_label

EXPIRY_ACTOR = "system:grant-expiry"


def _grants_of(principal: Principal) -> type[TopicUserGrant] | type[TopicGroupGrant]:
    """The grant model for a person or for a group."""
    return TopicUserGrant if isinstance(principal, User) else TopicGroupGrant


@transaction.atomic
def grant_create(
    *,
    principal: Principal,
    topics: Sequence[Topic],
    rights: Sequence[str],
    reason: str,
    actor: Actor,
    expires_at: dt.datetime | None = None,
) -> list[Grant]:
    """Give ``rights`` on ``topics`` to a person or group; a right already held gets the new reason and expiry."""
    reason = reason_checked(reason)
    if not topics:
        raise ActionRefusedError([{"path": "/topics", "message": "choose at least one topic"}])
    unknown = sorted(set(rights) - set(TOPIC_RIGHTS))
    if not rights or unknown:
        message = f"unknown right {unknown[0]!r}" if unknown else "choose at least one right"
        raise ActionRefusedError([{"path": "/rights", "message": f"{message}: one of {', '.join(TOPIC_RIGHTS)}"}])
    now = timezone.now()
    if expires_at is not None and expires_at <= now:
        raise ActionRefusedError([{"path": "/expires_at", "message": "is in the past: choose a later time or none"}])
    model = _grants_of(principal)
    permissions = {
        p.codename: p for p in Permission.objects.filter(content_type__app_label="busapp", codename__in=rights)
    }
    granted_by = actor_parts(actor)[0]
    holder = {"user": principal} if isinstance(principal, User) else {"group": principal}
    grants: list[Grant] = []
    renewed: list[str] = []
    for topic in sorted(topics, key=lambda t: t.name):
        for right in sorted(set(rights), key=RIGHT_RANK.__getitem__):
            found = (
                model.objects.select_for_update()
                .filter(**holder, permission=permissions[right], content_object=topic)
                .first()
            )
            if found is not None and not found.live_at(now):
                _expired_record(found)
                found.delete()
                found = None
            if found is None:
                found = model(**holder, permission=permissions[right], content_object=topic)
            else:
                renewed.append(f"{topic.name}:{right}")
            found.reason, found.expires_at, found.granted_by, found.granted_at = reason, expires_at, granted_by, now
            found.save()
            grants.append(found)
    audit_record(
        actor=actor,
        action=AuditAction.ACCESS_GRANT,
        target=principal_label(principal),
        details={
            "topics": sorted(topic.name for topic in topics),
            "rights": sorted(set(rights), key=RIGHT_RANK.__getitem__),
            "reason": reason,
            "expires_at": expires_at.isoformat() if expires_at else None,
            "renewed": renewed,
        },
    )
    return grants


@transaction.atomic
def grant_revoke(*, grants: Sequence[Grant], reason: str, actor: Actor) -> int:
    """Take back these grants (one audit entry per person or group); returns how many were taken back."""
    reason = reason_checked(reason)
    if not grants:
        raise ActionRefusedError([{"path": "/grants", "message": "choose at least one grant to revoke"}])
    by_principal: dict[str, list[Grant]] = {}
    for grant in grants:
        by_principal.setdefault(principal_label(grant_principal(grant)), []).append(grant)
    for label, held in sorted(by_principal.items()):
        audit_record(
            actor=actor,
            action=AuditAction.ACCESS_REVOKE,
            target=label,
            details={
                "rights": [f"{grant.content_object.name}:{grant.permission.codename}" for grant in held],
                "reason": reason,
                "granted_reasons": sorted({grant.reason for grant in held}),
            },
        )
        for grant in held:
            grant.delete()
    return len(grants)


def _expired_record(grant: Grant) -> None:
    """Write down that a grant ran out (with the reason it was given for)."""
    audit_record(
        actor=EXPIRY_ACTOR,
        action=AuditAction.ACCESS_EXPIRE,
        target=principal_label(grant_principal(grant)),
        details={
            "topic": grant.content_object.name,
            "right": grant.permission.codename,
            "expired_at": grant.expires_at.isoformat() if grant.expires_at else None,
            "reason": grant.reason,
        },
    )


def grants_expire(*, now: dt.datetime | None = None) -> int:
    """Remove grants past their expiry, each with its audit entry; returns how many.

    The checks already ignore them from the moment they expire; this writes that down and tidies the tables.
    """
    moment = now or timezone.now()
    removed = 0
    for model in (TopicUserGrant, TopicGroupGrant):
        if not model.objects.filter(expires_at__lte=moment).exists():
            continue  # the usual case: a read, not a write transaction every round of the worker
        with transaction.atomic():
            due = (
                model.objects.select_for_update()
                .filter(expires_at__lte=moment)
                .select_related("content_object", "permission", *(("user",) if model is TopicUserGrant else ("group",)))
            )
            for grant in due:
                _expired_record(grant)
                grant.delete()
                removed += 1
    return removed


def last_bus_admin_message(user: User) -> str:
    """What an admin is told when a change would leave the bus without an active Bus admin."""
    return f"{user.get_username()} is the last active Bus admin: make someone else one first"


@transaction.atomic
def role_member_set(*, user: User, role: Role, member: bool, reason: str, actor: Actor) -> None:
    """Put a person in a role group or take them out; the last active Bus admin cannot be taken out."""
    reason = reason_checked(reason)
    # Locking the group row serialises role changes, so two admins cannot remove each other at once.
    group = Group.objects.select_for_update().get(name=role.value)
    is_member = group.user_set.filter(pk=user.pk).exists()
    if is_member == member:
        state = "already in" if member else "not in"
        raise ActionRefusedError([{"path": "/role", "message": f"{user.get_username()} is {state} {role.value}"}])
    if not member and role == Role.BUS_ADMINS:
        others = group.user_set.filter(is_active=True).exclude(pk=user.pk)
        if not others.exists():
            raise ActionRefusedError(
                [
                    {
                        "path": "/role",
                        "message": last_bus_admin_message(user),
                    }
                ]
            )
    if member:
        group.user_set.add(user)
    else:
        group.user_set.remove(user)
    audit_record(
        actor=actor,
        action=AuditAction.ROLE_ADD if member else AuditAction.ROLE_REMOVE,
        target=f"user:{user.get_username()}",
        details={"role": role.value, "reason": reason},
    )


def user_create(*, username: str, role: Role, staff: bool, password: str, actor: Actor) -> tuple[User, bool]:
    """A person in a role's group, audited (``user.create``); the existing one, untouched, when the name is taken."""
    with transaction.atomic():
        user, is_new = User.objects.get_or_create(username=username, defaults={"is_staff": staff})
        if is_new:
            user.set_password(password)
            user.save(update_fields=["password"])
            user.groups.add(Group.objects.get(name=role.value))
            audit_record(
                actor=actor, action=AuditAction.USER_CREATE, target=f"user:{username}", details={"role": role.value}
            )
    return user, is_new


def user_password_set(*, user: User, password: str, actor: Actor) -> None:
    """Set a person's password, audited (``user.change`` naming the field, never the password)."""
    with transaction.atomic():
        user.set_password(password)
        user.save(update_fields=["password"])
        audit_record(
            actor=actor,
            action=AuditAction.USER_CHANGE,
            target=f"user:{user.get_username()}",
            details={"changed": ["password"]},
        )


def user_admin_change_record(*, actor: Actor, action: AuditAction, user: User, changed: Sequence[str]) -> None:
    """The audit entry of a change Django's admin site made to a person: which fields, their roles and state now.

    The admin site writes the person itself (its forms, its transaction); this is its one audit entry.
    """
    audit_record(
        actor=actor,
        action=action,
        target=f"user:{user.get_username()}",
        details={
            "via": "admin site",
            "changed": list(changed),
            "roles": sorted(user.groups.values_list("name", flat=True)),
            "active": user.is_active,
        },
    )
