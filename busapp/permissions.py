"""Permission codenames, the three roles and what each may do, and the one per-topic check.

``topic_right_held`` and ``topics_with_right`` answer for every caller, on every door: a person
(pages, websockets, the API with a session, management commands, actions) and a service token
(the API): one place decides who may do what on which topic.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import TYPE_CHECKING

from django.db.models import Q, QuerySet
from django.utils import timezone

from busapp.models import ServiceToken, Topic, TopicGroupGrant, TopicUserGrant

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

VIEW_TOPIC = "view_topic"
PUBLISH_TOPIC = "publish_topic"
APPROVE_TOPIC = "approve_topic"
MANAGE_TOPIC = "manage_topic"
EXPORT_TOPIC = "export_topic"
TOPIC_RIGHTS = (VIEW_TOPIC, PUBLISH_TOPIC, APPROVE_TOPIC, MANAGE_TOPIC, EXPORT_TOPIC)
# Each per-topic right as people say it, on every page and message.
RIGHT_WORDS = {
    VIEW_TOPIC: "view",
    PUBLISH_TOPIC: "publish",
    APPROVE_TOPIC: "approve",
    MANAGE_TOPIC: "manage",
    EXPORT_TOPIC: "export",
}


def right_word(codename: str) -> str:
    """A right's codename as people say it: ``manage_topic`` is "manage"."""
    return RIGHT_WORDS.get(codename, codename)


def principal_word(label: str) -> str:
    """A principal's label as people say it: ``user:policy2`` is "policy2 (person)", a group's "Auditors (group)"."""
    kind, _, name = label.partition(":")
    return f"{name} ({'person' if kind == 'user' else 'group'})" if name and kind in ("user", "group") else label


# Global only: the /access/ pages (grants, roles, service tokens).
MANAGE_ACCESS = "manage_access"


class Role(StrEnum):
    """The groups people are put in; per-topic rights come on top, through django-guardian."""

    POLICY_PUBLISHERS = "Policy publishers"
    AUDITORS = "Auditors"
    BUS_ADMINS = "Bus admins"


_READ_SCHEMAS = ("view_eventtype", "view_schemaversion")
_READ_EVERYTHING = (VIEW_TOPIC, *_READ_SCHEMAS, "view_event", "view_deadletter", "view_auditentry", "view_subscriber")

# Global (all-topic) permissions of each role, as busapp codenames.
ROLE_PERMISSIONS: dict[Role, tuple[str, ...]] = {
    # Policy staff see and publish only on topics granted to them one by one.
    Role.POLICY_PUBLISHERS: _READ_SCHEMAS,
    # Auditors read everything and export it; they change nothing.
    Role.AUDITORS: (*_READ_EVERYTHING, EXPORT_TOPIC),
    Role.BUS_ADMINS: (
        *_READ_EVERYTHING,
        *TOPIC_RIGHTS[1:],
        "add_topic",
        "change_topic",
        "add_eventtype",
        "change_eventtype",
        "add_schemaversion",
        "change_schemaversion",  # only its state can change
        "add_subscriber",
        "change_subscriber",
        MANAGE_ACCESS,
    ),
}


def grant_live(now: dt.datetime) -> Q:
    """Grants that still work at ``now``: no expiry, or one still ahead."""
    return Q(expires_at__isnull=True) | Q(expires_at__gt=now)


# A service token's rights: only these two, on the topics of its scope.
_TOKEN_RIGHTS = (PUBLISH_TOPIC, VIEW_TOPIC)


def token_holds(token: ServiceToken, right: str) -> bool:
    """Whether a service token was issued with ``right`` (on the topics of its scope): publish or view only."""
    return right in _TOKEN_RIGHTS and (token.can_publish if right == PUBLISH_TOPIC else token.can_view)


def topics_with_right(
    user: User | AnonymousUser | ServiceToken, right: str, topics: QuerySet[Topic] | None = None
) -> QuerySet[Topic]:
    """The topics (of ``topics``, default all) on which the caller holds ``right``.

    A person: role-wide, or by a live grant (this, not guardian's own checker, is the check:
    guardian cannot see expiry). A service token: the topics of its scope, if issued with the right.
    """
    chosen = topics if topics is not None else Topic.objects.all()
    if isinstance(user, ServiceToken):
        return chosen.filter(service_tokens=user) if token_holds(user, right) else chosen.none()
    if not user.is_active or user.pk is None:
        return chosen.none()
    if user.has_perm(f"busapp.{right}"):
        return chosen
    return chosen.filter(_granted(user.pk, right))


def topic_right_held(user: User | AnonymousUser | ServiceToken, right: str, topic: Topic) -> bool:
    """True when the caller holds ``right`` on this topic: a person's role or live grant, a token's scope and rights."""
    if isinstance(user, ServiceToken):
        return token_holds(user, right) and user.topics.filter(pk=topic.pk).exists()
    if not user.is_active or user.pk is None:
        return False
    if user.has_perm(f"busapp.{right}"):
        return True  # no query beyond the role's permissions, which Django caches on the user
    return Topic.objects.filter(_granted(user.pk, right), pk=topic.pk).exists()


def people_holding(right: str, topic: Topic) -> QuerySet[User]:
    """The active people who hold ``right`` on ``topic``: by their role, as superusers, or by a live grant.

    The same rule as ``topic_right_held``, asked the other way round: who may, rather than may this one.
    """
    from django.contrib.auth.models import User

    live = grant_live(timezone.now())
    permission = Q(permission__codename=right, permission__content_type__app_label="busapp")
    to_people = TopicUserGrant.objects.filter(live, permission, content_object=topic).values("user_id")
    to_groups = TopicGroupGrant.objects.filter(live, permission, content_object=topic).values("group_id")
    role_wide = Q(groups__permissions__codename=right, groups__permissions__content_type__app_label="busapp") | Q(
        user_permissions__codename=right, user_permissions__content_type__app_label="busapp"
    )
    holding = role_wide | Q(is_superuser=True) | Q(pk__in=to_people) | Q(groups__in=to_groups)
    return User.objects.filter(holding, is_active=True).distinct().order_by("username")


def _granted(person_id: int, right: str) -> Q:
    """Topics with a live grant of ``right`` to the person or one of their groups, read in one query.

    An expired grant is left out at the moment it expires, whether or not the worker has swept it yet.
    """
    live = grant_live(timezone.now())
    permission = Q(permission__codename=right, permission__content_type__app_label="busapp")
    to_person = TopicUserGrant.objects.filter(live, permission, user_id=person_id).values("content_object_id")
    to_groups = TopicGroupGrant.objects.filter(live, permission, group__user=person_id).values("content_object_id")
    return Q(pk__in=to_person) | Q(pk__in=to_groups)
