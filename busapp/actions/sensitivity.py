"""Four eyes on a topic's ``sensitive`` flag: one bus admin asks, with a reason; a second one approves or rejects.

The flag decides whether a publish needs a second person, so turning it off alone would let
one admin untick it, publish alone and tick it again. Here it changes only when a different
bus admin approves; the request, the decision and the change each write their audit entry.
Every other path is refused: ``Topic.save`` refuses a changed flag, the Django admin shows it
read-only, and the API and the commands do not change it on an existing topic.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from busapp.actions.registry import CHANGE_TOPIC
from busapp.audit import audit_record
from busapp.errors import ActionRefusedError, RightRefusedError
from busapp.models import AuditAction, ChangeRequestStatus, Topic, TopicSensitivityChange


def sensitivity_label(sensitive: bool) -> str:
    """How pages and messages say the flag's value."""
    return "sensitive" if sensitive else "not sensitive"


def may_change_sensitivity(user: User) -> bool:
    """True for an active bus admin: the people who may request and decide a change."""
    return user.is_active and user.has_perm(CHANGE_TOPIC)


def _bus_admin_checked(actor: User) -> None:
    """Refuse anyone but an active bus admin."""
    if not may_change_sensitivity(actor):
        message = f"{actor.get_username()} is not a bus admin: only bus admins change whether a topic is sensitive"
        raise ActionRefusedError([{"path": "/actor", "message": message}])


def _reason_checked(reason: str, path: str = "/reason") -> str:
    """The reason, stripped; refused when empty (each step says why, for the audit log)."""
    text = reason.strip()
    if not text:
        raise ActionRefusedError([{"path": path, "message": "is required: say why, for the audit log"}])
    return text


@transaction.atomic
def topic_sensitivity_request(*, topic: Topic, sensitive: bool, reason: str, actor: User) -> TopicSensitivityChange:
    """Ask for the topic to become ``sensitive`` (or not); nothing changes until a second bus admin approves."""
    _bus_admin_checked(actor)
    reason = _reason_checked(reason)
    # The topic row first, here and in the decision, so the two never wait on each other in turn.
    locked = Topic.objects.select_for_update().get(pk=topic.pk)
    if locked.sensitive == sensitive:
        message = f"topic {locked.name!r} is already {sensitivity_label(sensitive)}"
        raise ActionRefusedError([{"path": "/sensitive", "message": message}])
    waiting = TopicSensitivityChange.objects.filter(topic=locked, status=ChangeRequestStatus.AWAITING_APPROVAL)
    if waiting.exists():
        message = f"change #{waiting.get().pk} is already waiting for a second bus admin: decide or cancel it first"
        raise ActionRefusedError([{"path": "/status", "message": message}])
    change = TopicSensitivityChange.objects.create(topic=locked, sensitive=sensitive, reason=reason, requested_by=actor)
    audit_record(
        actor=actor,
        action=AuditAction.TOPIC_SENSITIVITY_REQUEST,
        target=f"topic:{locked.name}",
        details={"change": change.pk, "sensitive": sensitive, "was": locked.sensitive, "reason": reason},
    )
    return change


def _open_change_locked(change_id: int) -> tuple[TopicSensitivityChange, Topic]:
    """The change and its topic, both locked (topic first); refused unless the change is still open."""
    topic_id = TopicSensitivityChange.objects.values_list("topic_id", flat=True).get(pk=change_id)
    topic = Topic.objects.select_for_update().get(pk=topic_id)
    change = (
        TopicSensitivityChange.objects.select_for_update(of=("self",)).select_related("requested_by").get(pk=change_id)
    )
    if not change.is_open:
        message = f"change #{change.pk} is already {change.get_status_display()}"
        raise ActionRefusedError([{"path": "/status", "message": message}])
    change.topic = topic
    return change, topic


@transaction.atomic
def topic_sensitivity_decide(*, change_id: int, actor: User, approve: bool, reason: str) -> TopicSensitivityChange:
    """A second bus admin approves (the flag changes now) or rejects the change, saying why."""
    _bus_admin_checked(actor)
    change, topic = _open_change_locked(change_id)
    if change.requested_by_id == actor.pk:
        message = "nobody may approve or reject their own request: a second bus admin decides"
        raise RightRefusedError([{"path": "/approval", "message": message}])
    reason = _reason_checked(reason)
    change.status = ChangeRequestStatus.APPROVED if approve else ChangeRequestStatus.REJECTED
    change.decided_by, change.decided_at, change.decision_reason = actor, timezone.now(), reason
    change.save(update_fields=["status", "decided_by", "decided_at", "decision_reason"])
    requested_by = change.requested_by.get_username()
    audit_record(
        actor=actor,
        action=AuditAction.TOPIC_SENSITIVITY_APPROVE if approve else AuditAction.TOPIC_SENSITIVITY_REJECT,
        target=f"topic:{topic.name}",
        details={"change": change.pk, "sensitive": change.sensitive, "reason": reason, "requested_by": requested_by},
    )
    if approve:
        was = topic.sensitive
        # An update, not Topic.save: save refuses a changed flag to everyone but this approval.
        Topic.objects.filter(pk=topic.pk).update(sensitive=change.sensitive)
        topic.sensitive = change.sensitive
        audit_record(
            actor=actor,
            action=AuditAction.TOPIC_UPDATE,
            target=f"topic:{topic.name}",
            details={
                "sensitive": change.sensitive,
                "was": was,
                "change": change.pk,
                "requested_by": requested_by,
                "approved_by": actor.get_username(),
            },
        )
    return change


@transaction.atomic
def topic_sensitivity_cancel(*, change_id: int, actor: User) -> TopicSensitivityChange:
    """The requester withdraws a change nobody has decided yet."""
    change, topic = _open_change_locked(change_id)
    if change.requested_by_id != actor.pk:
        message = "only its requester may cancel it; a second bus admin rejects it instead"
        raise ActionRefusedError([{"path": "/actor", "message": message}])
    change.status, change.decided_by, change.decided_at = ChangeRequestStatus.CANCELLED, actor, timezone.now()
    change.save(update_fields=["status", "decided_by", "decided_at"])
    audit_record(
        actor=actor,
        action=AuditAction.TOPIC_SENSITIVITY_CANCEL,
        target=f"topic:{topic.name}",
        details={"change": change.pk, "sensitive": change.sensitive},
    )
    return change


def topic_sensitivity_changes(topic: Topic, *, limit: int = 20) -> QuerySet[TopicSensitivityChange]:
    """The topic's newest sensitivity changes, open or decided, with who asked and who decided."""
    return topic.sensitivity_changes.select_related("requested_by", "decided_by")[:limit]
