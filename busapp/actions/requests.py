"""Publishes that wait: for a second person's approval (sensitive topics), for their time, or both."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from busapp.actions.publishing import event_publish
from busapp.actions.reasons import reason_checked
from busapp.audit import audit_record
from busapp.errors import (
    ActionRefusedError,
    BusInputError,
    EventRejectedError,
    RightRefusedError,
)
from busapp.models import (
    AuditAction,
    PublishRequest,
    PublishRequestStatus,
    Source,
)
from busapp.permissions import APPROVE_TOPIC, topic_right_held
from busapp.selectors import schema_version_active
from busapp.validation import (
    effective_at_error,
    payload_errors,
    payload_json,
)


def publish_request_create(
    *,
    topic: str,
    event_type: str,
    payload: Any,
    actor: User,
    envelope_id: uuid.UUID,
    effective_at: dt.datetime | None = None,
) -> PublishRequest:
    """Keep a publish that must wait for approval (a sensitive topic) or for its time; it is validated now."""
    version = schema_version_active(topic=topic, event_type=event_type)
    errors = payload_errors(version, payload)
    if errors:
        raise EventRejectedError(errors)
    too_late = effective_at_error(effective_at) if effective_at is not None else None
    if too_late:
        raise EventRejectedError([too_late])
    sensitive = version.event_type.topic.sensitive
    with transaction.atomic():
        request = PublishRequest.objects.create(
            envelope_id=str(envelope_id),
            topic_id=version.event_type.topic.pk,
            event_type_id=version.event_type.pk,
            payload=payload,
            requested_by=actor,
            needs_approval=sensitive,
            effective_at=effective_at,
            status=PublishRequestStatus.AWAITING_APPROVAL if sensitive else PublishRequestStatus.SCHEDULED,
        )
        audit_record(
            actor=actor,
            action=AuditAction.PUBLISH_REQUEST_CREATE,
            target=f"publish_request:{request.pk}",
            details={
                "topic": topic,
                "type": event_type,
                "envelope_id": request.envelope_id,
                "needs_approval": sensitive,
                "effective_at": effective_at.isoformat() if effective_at else None,
                "payload_sha256": hashlib.sha256(payload_json(payload).encode()).hexdigest(),
            },
        )
    return request


def _open_request_locked(request_id: int) -> PublishRequest:
    """The request, locked for this transaction; refused unless it can still go out."""
    request = (
        PublishRequest.objects.select_for_update(of=("self",))
        .select_related("topic", "event_type", "requested_by", "decided_by")
        .get(pk=request_id)
    )
    if not request.is_open:
        message = f"this request is already {request.get_status_display()}"
        raise ActionRefusedError([{"path": "/status", "message": message}])
    return request


@transaction.atomic
def publish_request_decide(*, request_id: int, actor: User, approve: bool, reason: str) -> PublishRequest:
    """A second person approves (the event goes out now, or at its time) or rejects, saying why."""
    request = _open_request_locked(request_id)
    if request.status != PublishRequestStatus.AWAITING_APPROVAL:
        raise ActionRefusedError([{"path": "/status", "message": "this request needs no approval"}])
    if request.requested_by_id == actor.pk:
        raise RightRefusedError([{"path": "/approval", "message": "nobody may approve or reject their own request"}])
    request.decided_by, request.decided_at, request.decision_reason = actor, timezone.now(), reason_checked(reason)
    request.status = PublishRequestStatus.REJECTED
    if approve:
        waits = request.effective_at is not None and request.effective_at > timezone.now()
        request.status = PublishRequestStatus.SCHEDULED if waits else request.status
    request.save(update_fields=["decided_by", "decided_at", "decision_reason", "status"])
    audit_record(
        actor=actor,
        action=AuditAction.PUBLISH_REQUEST_APPROVE if approve else AuditAction.PUBLISH_REQUEST_REJECT,
        target=f"publish_request:{request.pk}",
        details={"reason": request.decision_reason, "envelope_id": request.envelope_id},
    )
    if approve and request.status != PublishRequestStatus.SCHEDULED:
        _request_publish(request, approved_by=actor)
    return request


@transaction.atomic
def publish_request_cancel(*, request_id: int, actor: User, reason: str) -> PublishRequest:
    """Withdraw a publish before it goes out, saying why: its requester may, and whoever may approve on its topic."""
    request = _open_request_locked(request_id)
    if request.requested_by_id != actor.pk and not topic_right_held(actor, APPROVE_TOPIC, request.topic):
        message = "only its requester or an approver of the topic may cancel a waiting publish"
        raise RightRefusedError([{"path": "/actor", "message": message}])
    request.status = PublishRequestStatus.CANCELLED
    request.decided_by, request.decided_at = actor, timezone.now()
    request.decision_reason = reason_checked(reason)
    request.save(update_fields=["status", "decided_by", "decided_at", "decision_reason"])
    audit_record(
        actor=actor,
        action=AuditAction.PUBLISH_REQUEST_CANCEL,
        target=f"publish_request:{request.pk}",
        details={"reason": request.decision_reason, "envelope_id": request.envelope_id},
    )
    return request


def publish_requests_due(*, now: dt.datetime | None = None, limit: int = 100) -> int:
    """Publish the scheduled requests whose time has come, oldest first; return how many were handled."""
    now = now or timezone.now()
    due = list(
        PublishRequest.objects.filter(status=PublishRequestStatus.SCHEDULED, effective_at__lte=now)
        .order_by("effective_at", "id")
        .values_list("id", flat=True)[:limit]
    )
    handled = 0
    for request_id in due:
        with transaction.atomic():
            request = (
                PublishRequest.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("topic", "event_type", "requested_by", "decided_by")
                .filter(pk=request_id, status=PublishRequestStatus.SCHEDULED)
                .first()
            )
            if request is None:  # cancelled meanwhile, or another worker has it
                continue
            _request_publish(request, approved_by=request.decided_by if request.needs_approval else None)
            handled += 1
    return handled


def _request_publish(request: PublishRequest, *, approved_by: User | None) -> None:
    """Publish a request's event in the caller's transaction, or record why it could not go out."""
    try:
        with transaction.atomic():  # a savepoint: a refused publish still leaves the request's record
            event = event_publish(
                topic=request.topic.name,
                event_type=request.event_type.name,
                payload=request.payload,
                actor=request.requested_by,
                source=Source.FORM,
                approved_by=approved_by,
                envelope_id=uuid.UUID(request.envelope_id),
            )
    except BusInputError as refused:  # the schema changed, or the version was deprecated, meanwhile
        request.status, request.failure = PublishRequestStatus.FAILED, str(refused)
        request.save(update_fields=["status", "failure"])
        audit_record(
            actor="system:publisher",
            action=AuditAction.PUBLISH_REQUEST_FAIL,
            target=f"publish_request:{request.pk}",
            details={"errors": refused.errors[:20], "envelope_id": request.envelope_id},
        )
        return
    request.status, request.event = PublishRequestStatus.PUBLISHED, event
    request.save(update_fields=["status", "event"])
