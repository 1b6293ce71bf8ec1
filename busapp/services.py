"""State changes: each validates, writes its rows and audit entries in one transaction, and sends only on commit."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group, Permission, User
from django.db import transaction
from django.db.models import Model
from django.db.models.base import ModelState
from django.utils import timezone

from busapp.audit import Actor, AuditRecord, actor_parts, audit_append, audit_record
from busapp.errors import (
    ActionRefusedError,
    ApprovalRequiredError,
    BusInputError,
    EventRejectedError,
    FieldError,
    PayloadTooLargeError,
    RightRefusedError,
    SchemaInvalidError,
    errors_joined,
)
from busapp.models import (
    AuditAction,
    BulkAction,
    BulkActionKind,
    BulkActionStatus,
    Compatibility,
    DeadLetter,
    DeadLetterStatus,
    Event,
    EventStatus,
    EventType,
    IdempotencyKey,
    PublishRequest,
    PublishRequestStatus,
    SchemaVersion,
    Source,
    Topic,
)
from busapp.permissions import APPROVE_TOPIC, ROLE_PERMISSIONS, topic_right_held
from busapp.publishing import dead_letters_send, envelope_head, envelope_wire, events_send
from busapp.rows import rows_insert
from busapp.selectors import ActiveVersions, envelopes_sha256, schema_version_active, topic_get
from busapp.validation import (
    backward_incompatibilities,
    effective_at_error,
    json_parse,
    payload_encoded,
    payload_errors,
    payload_json,
    payload_schema_errors,
    payload_size_error,
    schema_check,
    schema_fingerprint,
    schema_uri,
)


def roles_ensure() -> None:
    """Create the three role groups with their global permissions (idempotent)."""
    for role, codenames in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role.value)
        permissions = Permission.objects.filter(content_type__app_label="busapp", codename__in=codenames)
        group.permissions.set(permissions)


@transaction.atomic
def record_change(*, obj: Model, changed_fields: Sequence[str], actor: Actor) -> None:
    """Save an edit of some fields (a topic's description, a version's deprecated flag) with its audit entry."""
    if not changed_fields:
        return
    obj.save(update_fields=list(changed_fields))
    model = obj._meta.model_name
    audit_record(
        actor=actor,
        action=AuditAction(f"{model}.update"),  # topic, eventtype, schemaversion
        target=f"{model}:{obj}",
        details={field: str(getattr(obj, field)) for field in changed_fields},
    )


@transaction.atomic
def topic_create(
    *,
    name: str,
    actor: Actor,
    description: str = "",
    sensitive: bool = False,
    stream_retention: int | None = None,
) -> Topic:
    """Create a topic after checking its name against the naming rule (retention default: BUS_STREAM_MAXLEN)."""
    user, _ = actor_parts(actor)
    if stream_retention is None:
        stream_retention = settings.BUS_STREAM_MAXLEN
    topic = Topic(
        name=name,
        description=description,
        sensitive=sensitive,
        stream_retention=stream_retention,
        created_by=user,
    )
    topic.full_clean()
    topic.save()
    audit_record(
        actor=actor,
        action=AuditAction.TOPIC_CREATE,
        target=f"topic:{name}",
        details={"description": description, "sensitive": sensitive, "stream_retention": stream_retention},
    )
    return topic


@transaction.atomic
def event_type_create(*, topic: Topic, name: str, actor: Actor, description: str = "") -> EventType:
    """Create an event type on a topic after checking its name."""
    event_type = EventType(topic=topic, name=name, description=description)
    event_type.full_clean()
    event_type.save()
    audit_record(actor=actor, action=AuditAction.EVENT_TYPE_CREATE, target=f"event_type:{event_type}", details={})
    return event_type


def schema_version_check(*, event_type: EventType, schema: Any, compatibility: str) -> int:
    """Raise SchemaInvalidError when the schema cannot be the next version; return that version's number."""
    latest = SchemaVersion.objects.filter(event_type=event_type).order_by("-version").first()
    number = latest.version + 1 if latest else 1
    schema_check(schema, uri=schema_uri(event_type.topic.name, event_type.name, number))
    if latest is not None and compatibility == Compatibility.BACKWARD:
        problems = backward_incompatibilities(latest.schema, schema)
        if problems:
            raise SchemaInvalidError(
                f"not backward compatible with v{latest.version}: "
                + "; ".join(problems)
                + " (create it with compatibility 'none' to allow a breaking change)"
            )
    return number


@transaction.atomic
def schema_version_create(
    *,
    event_type: EventType,
    schema: Any,
    actor: Actor,
    compatibility: str = Compatibility.BACKWARD,
) -> SchemaVersion:
    """Save the next schema version of an event type; refuse an invalid or (in backward mode) breaking schema."""
    number = schema_version_check(event_type=event_type, schema=schema, compatibility=compatibility)
    user, _ = actor_parts(actor)
    version = SchemaVersion.objects.create(
        event_type=event_type,
        version=number,
        schema=schema,
        source=json.dumps(schema, ensure_ascii=False),
        fingerprint=schema_fingerprint(schema),
        compatibility=compatibility,
        created_by=user,
    )
    audit_record(
        actor=actor,
        action=AuditAction.SCHEMA_VERSION_CREATE,
        target=f"schema:{event_type}/v{number}",
        details={"fingerprint": version.fingerprint, "compatibility": compatibility},
    )
    return version


def event_build(
    *,
    version: SchemaVersion,
    payload: Any,
    actor: Actor,
    source: str,
    published: dt.datetime | None = None,
    encoded: str | None = None,
    envelope_id: uuid.UUID | None = None,
) -> Event:
    """An unsaved, pending Event for a valid payload, with its exact wire envelope.

    ``published`` is the envelope's timestamp (default: now); ``encoded`` the payload's
    ``payload_json`` if the caller made it already; ``envelope_id`` an id chosen before
    (a previewed publish), else a new one.
    """
    event_type = version.event_type
    topic = event_type.topic
    publisher, publisher_name = actor_parts(actor)
    published = published or timezone.now()
    head = _envelope_head(version, source, publisher_name, published)
    encoded = payload_json(payload) if encoded is None else encoded
    envelope_text, wire = envelope_wire(head=head, payload_json=encoded, envelope_id=envelope_id)
    return Event(
        envelope_id=envelope_text,
        topic=topic,
        event_type=event_type,
        schema_version=version,
        payload=payload,
        envelope=wire,
        timestamp=published,
        source=source,
        publisher=publisher,
        publisher_name=publisher_name[:150],
        status=EventStatus.PENDING,
        # The after-commit send goes first; the relay only takes what it left behind.
        next_attempt_at=published + dt.timedelta(seconds=settings.BUS_RELAY_GRACE_SECONDS),
    )


def _envelope_head(version: SchemaVersion, source: str, publisher_name: str, published: dt.datetime) -> str:
    """The envelope members an event of this version, source, publisher and time has besides id and payload."""
    return envelope_head(
        event_type=version.event_type.name,
        topic=version.event_type.topic.name,
        schema_version=version.version,
        source=source,
        publisher=publisher_name,
        timestamp=published.timestamp(),
    )


class _BatchEvents:
    """Builds a batch's events: the first of each schema version from scratch, the rest as copies of it.

    All events of one batch share their publisher, source and timestamp, so a copy with its
    own id and payload is all a further event needs; it costs a quarter of a new model instance.
    """

    def __init__(self, *, actor: Actor, source: str) -> None:
        self.actor, self.source, self.published = actor, source, timezone.now()
        self.first: dict[int, tuple[Event, str]] = {}  # by version: the first event and its envelope head

    def build(self, version: SchemaVersion, payload: Any, encoded: str) -> Event:
        """The next event of the batch."""
        known = self.first.get(version.pk)
        if known is None:
            event = event_build(
                version=version,
                payload=payload,
                actor=self.actor,
                source=self.source,
                published=self.published,
                encoded=encoded,
            )
            head = _envelope_head(version, self.source, actor_parts(self.actor)[1], self.published)
            self.first[version.pk] = (event, head)
            return event
        first, head = known
        event = _event_like(first)
        event.envelope_id, event.envelope = envelope_wire(head=head, payload_json=encoded)
        event.payload = payload
        return event


def _event_like(first: Event) -> Event:
    """A new unsaved Event with the same field values as ``first`` (its related objects shared, not copied).

    ``copy.copy`` of a model instance goes through ``Model.__getstate__`` and cost 21 us an
    event of a 1,000-event batch; this costs about 2.
    """
    event = Event.__new__(Event)
    event.__dict__.update(first.__dict__)
    state = ModelState()
    state.db, state.adding, state.fields_cache = first._state.db, True, dict(first._state.fields_cache)
    event._state = state
    return event


def _publish_record(event: Event) -> AuditRecord:
    """The audit entry that says an event was accepted; its envelope's digest makes the history row tamper-evident."""
    return AuditRecord(
        AuditAction.EVENT_PUBLISH,
        f"event:{event.envelope_id}",
        {
            "topic": event.topic.name,
            "type": event.event_type.name,
            "schema_version": event.schema_version.version,
            "source": event.source,
            "envelope_sha256": envelopes_digest([event]),
        },
    )


def _batch_record(topic: str, source: str, events: Sequence[Event]) -> AuditRecord:
    """The one audit entry of a batch publish: which events it accepted, and their envelopes' digest."""
    return AuditRecord(
        AuditAction.EVENT_PUBLISH_BATCH,
        f"topic:{topic}",
        {
            "source": source,
            "count": len(events),
            "events": [event.envelope_id for event in events],
            "envelopes_sha256": envelopes_digest(events),
        },
    )


def envelopes_digest(events: Sequence[Event]) -> str:
    """sha256 of the events' wire envelopes, one per line, in order: what the audit log vouches for."""
    return envelopes_sha256(event.envelope for event in events)


def _approval_check(topic: Topic, actor: Actor, approved_by: Actor | None) -> None:
    """Refuse a publish to a sensitive topic without a second person's approval."""
    if not topic.sensitive:
        return
    if approved_by is None:
        message = f"topic {topic.name!r} is sensitive: a publish needs a second person's approval"
        raise ApprovalRequiredError([{"path": "/topic", "message": message}])
    if actor_parts(approved_by)[1] == actor_parts(actor)[1]:
        raise ApprovalRequiredError([{"path": "/approval", "message": "nobody may approve their own publish"}])


def event_publish(
    *,
    topic: str,
    event_type: str,
    payload: Any,
    actor: Actor,
    source: str,
    approved_by: Actor | None = None,
    envelope_id: uuid.UUID | None = None,
) -> Event:
    """Validate, record (outbox + audit, one transaction), then put the event on the bus on commit.

    Returns the event: ``published``, or ``pending`` when Redis is down (the relay sends it later).
    Raises TopicNotFoundError, ApprovalRequiredError or EventRejectedError and writes nothing
    when the input is refused; an ``envelope_id`` already in history raises IntegrityError
    (a form submitted twice publishes once).
    """
    version = schema_version_active(topic=topic, event_type=event_type)
    _approval_check(version.event_type.topic, actor, approved_by)
    encoded, unstorable = payload_encoded(payload)
    if unstorable:  # nested over 64 levels, NUL, lone surrogates
        raise EventRejectedError(unstorable)
    errors = payload_errors(version, payload, encoded=encoded)
    if errors:
        raise EventRejectedError(errors)
    event = event_build(
        version=version, payload=payload, actor=actor, source=source, encoded=encoded, envelope_id=envelope_id
    )
    record = _publish_record(event)
    if approved_by is not None:
        record.details["approved_by"] = actor_parts(approved_by)[1]
    with transaction.atomic():
        rows_insert([event])
        audit_append(actor=actor, records=[record])
        transaction.on_commit(lambda: events_send([event]), robust=True)
    return event


def dead_letter_build(
    *,
    topic: Topic,
    raw: str,
    errors: list[FieldError],
    source: str,
    actor: Actor,
    origin: str | None = None,
) -> DeadLetter:
    """An unsaved dead letter and the JSON that goes to ``<topic>.dlq``."""
    publisher, publisher_name = actor_parts(actor)
    received_at = timezone.now()
    arrived, unreadable = json_parse(raw, around=1)  # an envelope: its payload may nest 64 levels
    if unreadable:  # not JSON, too deep to carry, NUL, surrogates: the DLQ message carries the text
        arrived = raw
    message = {
        "event": arrived,
        "errors": errors,
        "received_at": received_at.timestamp(),
        "source": source,
        "topic": topic.name,
    }
    return DeadLetter(
        topic=topic,
        raw=raw,
        errors=errors,
        source=source,
        publisher=publisher,
        publisher_name=publisher_name[:150],
        origin=origin,
        received_at=received_at,
        dlq_message=json.dumps(message, separators=(",", ":"), ensure_ascii=False),
    )


def dead_letter_audit_record(letter: DeadLetter) -> AuditRecord:
    """The audit entry that says something was dead-lettered, and why."""
    return AuditRecord(
        AuditAction.DEAD_LETTER_CREATE,
        f"topic:{letter.topic.name}",
        {"source": letter.source, "errors": letter.errors[:20], "origin": letter.origin},
    )


def dead_letter_create(*, topic: Topic, raw: str, errors: list[FieldError], source: str, actor: Actor) -> DeadLetter:
    """Keep a refused event as it arrived, audit it, and send it to ``<topic>.dlq`` on commit."""
    letter = dead_letter_build(topic=topic, raw=raw, errors=errors, source=source, actor=actor)
    with transaction.atomic():
        letter.save()
        audit_append(actor=actor, records=[dead_letter_audit_record(letter)])
        transaction.on_commit(lambda: dead_letters_send([letter]), robust=True)
    return letter


@dataclass
class BatchOutcome:
    """What a batch publish did with each item, in order: an event, or a dead letter with its errors."""

    events: list[Event] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    items: list[Event | DeadLetter] = field(default_factory=list)


def event_publish_batch(
    *, topic: str, items: Sequence[Mapping[str, Any]], actor: Actor, source: str = Source.API
) -> BatchOutcome:
    """Publish many ``{"type", "payload"}`` items: one transaction, one Redis round trip.

    Valid items become events; invalid ones become dead letters (and go to ``<topic>.dlq``).
    A payload over the size limit refuses the whole batch (PayloadTooLargeError), and so does one that
    nothing could store (nested over 64 levels, NUL, lone surrogates: EventRejectedError); nothing is written.
    """
    topic_row = topic_get(name=topic)
    _approval_check(topic_row, actor, approved_by=None)
    active = ActiveVersions()
    outcome = BatchOutcome()
    events = _BatchEvents(actor=actor, source=source)
    too_big: list[FieldError] = []
    unstorable: list[FieldError] = []
    for index, item in enumerate(items):
        try:
            checked = _batch_item_check(item, topic, active)
        except PayloadTooLargeError as refused:
            too_big += [{"path": f"/events/{index}{e['path']}", "message": e["message"]} for e in refused.errors]
            continue
        except EventRejectedError as refused:
            unstorable += [{"path": f"/events/{index}{e['path']}", "message": e["message"]} for e in refused.errors]
            continue
        if isinstance(checked, tuple):
            version, encoded = checked
            event = events.build(version, item["payload"], encoded)
            outcome.events.append(event)
            outcome.items.append(event)
        else:
            raw = json.dumps(dict(item), separators=(",", ":"), ensure_ascii=False, default=str)
            letter = dead_letter_build(topic=topic_row, raw=raw, errors=checked, source=source, actor=actor)
            outcome.dead_letters.append(letter)
            outcome.items.append(letter)
    if unstorable:  # what no database could store goes nowhere, not even into the dead-letter queue
        raise EventRejectedError(unstorable)
    if too_big:  # documents do not go on the bus, not even into its dead-letter queue
        raise PayloadTooLargeError(too_big)
    with transaction.atomic():
        rows_insert(outcome.events)
        DeadLetter.objects.bulk_create(outcome.dead_letters)
        # One entry for the batch, the one action it is, naming every event it accepted.
        records = [_batch_record(topic, source, outcome.events)] if outcome.events else []
        records += [dead_letter_audit_record(letter) for letter in outcome.dead_letters]
        audit_append(actor=actor, records=records)
        transaction.on_commit(lambda: _batch_send(outcome), robust=True)
    return outcome


def _batch_item_check(
    item: Mapping[str, Any], topic: str, active: ActiveVersions
) -> tuple[SchemaVersion, str] | list[FieldError]:
    """The schema version a batch item is valid under with its encoded payload, or every error it has."""
    type_name, payload = item.get("type"), item.get("payload")
    if not isinstance(type_name, str):
        return [{"path": "/type", "message": "is required and must be a string"}]
    version = active.get(topic, type_name)
    if isinstance(version, list):
        return version
    if not isinstance(payload, dict):
        return [{"path": "/payload", "message": "is required and must be an object"}]
    encoded, unstorable = payload_encoded(payload)
    if unstorable:
        raise EventRejectedError(unstorable)
    too_big = payload_size_error(encoded)
    if too_big:
        raise PayloadTooLargeError([too_big])
    return payload_schema_errors(version, payload, encoded=encoded) or (version, encoded)


def _batch_send(outcome: BatchOutcome) -> None:
    """Send a committed batch's events, then its dead letters."""
    events_send(outcome.events)
    dead_letters_send(outcome.dead_letters)


# Publishes that wait: for a second person's approval (sensitive topics), for their time, or both.


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
    if not reason.strip():
        raise ActionRefusedError([{"path": "/reason", "message": "is required: say why, for the audit log"}])
    request.decided_by, request.decided_at, request.decision_reason = actor, timezone.now(), reason.strip()
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
def publish_request_cancel(*, request_id: int, actor: User, reason: str = "") -> PublishRequest:
    """Withdraw a publish before it goes out: its requester may, and so may whoever may approve on its topic."""
    request = _open_request_locked(request_id)
    if request.requested_by_id != actor.pk and not topic_right_held(actor, APPROVE_TOPIC, request.topic):
        message = "only its requester or an approver of the topic may cancel a waiting publish"
        raise RightRefusedError([{"path": "/actor", "message": message}])
    request.status = PublishRequestStatus.CANCELLED
    request.decided_by, request.decided_at = actor, timezone.now()
    request.decision_reason = reason.strip() or "cancelled"
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


# The dead-letter workbench: a fixed dead letter replayed to its topic, or discarded with a reason.


def _open_letter_locked(letter_id: int) -> DeadLetter:
    """The dead letter, locked for this transaction; refused unless it is still open."""
    letter = DeadLetter.objects.select_for_update(of=("self",)).select_related("topic").get(pk=letter_id)
    if letter.status != DeadLetterStatus.OPEN:
        message = f"this dead letter was already {letter.get_status_display()}"
        raise ActionRefusedError([{"path": "/status", "message": message}])
    return letter


@transaction.atomic
def dead_letter_replay(*, letter_id: int, event_type: str, payload: Any, actor: User) -> Event:
    """Publish a (fixed) dead letter to its original topic as a new event whose record names the letter.

    Validated against the current schema version like any publish: a payload that still
    fails is refused with its errors, and the letter stays open.
    """
    letter = _open_letter_locked(letter_id)
    event = event_publish(
        topic=letter.topic.name, event_type=event_type, payload=payload, actor=actor, source=Source.REPLAY
    )
    letter.status, letter.replayed_by, letter.replayed_at, letter.replay_event = (
        DeadLetterStatus.REPLAYED,
        actor,
        timezone.now(),
        event,
    )
    letter.save(update_fields=["status", "replayed_by", "replayed_at", "replay_event"])
    audit_record(
        actor=actor,
        action=AuditAction.DEAD_LETTER_REPLAY,
        target=f"dead_letter:{letter.pk}",
        details={"topic": letter.topic.name, "type": event_type, "event": event.envelope_id},
    )
    return event


@transaction.atomic
def dead_letter_discard(*, letter_id: int, actor: User, reason: str) -> DeadLetter:
    """Close a dead letter without sending anything, saying why."""
    if not reason.strip():
        raise ActionRefusedError([{"path": "/reason", "message": "is required: say why, for the audit log"}])
    letter = _open_letter_locked(letter_id)
    letter.status, letter.discarded_by, letter.discarded_at, letter.discard_reason = (
        DeadLetterStatus.DISCARDED,
        actor,
        timezone.now(),
        reason.strip(),
    )
    letter.save(update_fields=["status", "discarded_by", "discarded_at", "discard_reason"])
    audit_record(
        actor=actor,
        action=AuditAction.DEAD_LETTER_DISCARD,
        target=f"dead_letter:{letter.pk}",
        details={"topic": letter.topic.name, "reason": letter.discard_reason},
    )
    return letter


# Bulk replay and discard over many dead letters: estimated first, then run by the worker at a capped rate.

BULK_RATE_LIMIT = 500  # dead letters a second, at most, whatever is asked


def dead_letter_contents(letter: DeadLetter) -> tuple[str | None, dict[str, Any] | None]:
    """The event type and payload a dead letter carried, where its body says (None where it was not JSON)."""
    body, unreadable = json_parse(letter.raw, around=1)
    if unreadable or not isinstance(body, dict):
        return None, None
    kind = body.get("type") if isinstance(body.get("type"), str) else None
    payload = body.get("payload") if isinstance(body.get("payload"), dict) else None
    return kind, payload


@dataclass(frozen=True)
class BulkEstimate:
    """What a bulk action over a selection would meet: how many letters, how many pass the current schema."""

    letter_ids: list[int]
    passing: int


def bulk_estimate(*, letters: Sequence[DeadLetter]) -> BulkEstimate:
    """Check each open letter's contents against its type's current schema version, without changing anything."""
    active = ActiveVersions()
    passing = 0
    for letter in letters:
        kind, payload = dead_letter_contents(letter)
        version = active.get(letter.topic.name, kind) if kind else None
        if isinstance(version, SchemaVersion) and payload is not None and not payload_errors(version, payload):
            passing += 1
    return BulkEstimate([letter.pk for letter in letters], passing)


@transaction.atomic
def bulk_action_start(
    *, topic: Topic, kind: str, letter_ids: list[int], actor: User, rate_per_second: int, reason: str = ""
) -> BulkAction:
    """Start a bulk replay or discard; the bus worker runs it at the capped rate."""
    if kind == BulkActionKind.DISCARD and not reason.strip():
        raise ActionRefusedError([{"path": "/reason", "message": "is required to discard: say why, for the audit log"}])
    if not 1 <= rate_per_second <= BULK_RATE_LIMIT:
        message = f"must be from 1 to {BULK_RATE_LIMIT} dead letters a second"
        raise ActionRefusedError([{"path": "/rate_per_second", "message": message}])
    if not letter_ids:
        raise ActionRefusedError([{"path": "/selection", "message": "no open dead letter matches"}])
    action = BulkAction.objects.create(
        topic=topic,
        kind=kind,
        letter_ids=letter_ids,
        reason=reason.strip(),
        rate_per_second=rate_per_second,
        requested_by=actor,
    )
    audit_record(
        actor=actor,
        action=AuditAction(f"dead_letter.bulk_{kind}.start"),
        target=f"bulk_action:{action.pk}",
        details={"topic": topic.name, "letters": len(letter_ids), "rate_per_second": rate_per_second},
    )
    return action


@transaction.atomic
def bulk_action_cancel(*, action_id: int, actor: User) -> BulkAction:
    """Stop a running bulk action; what it already did stays done."""
    action = BulkAction.objects.select_for_update(of=("self",)).get(pk=action_id)
    if action.status != BulkActionStatus.RUNNING:
        raise ActionRefusedError([{"path": "/status", "message": f"this bulk action is already {action.status}"}])
    action.status, action.finished_at = BulkActionStatus.CANCELLED, timezone.now()
    action.save(update_fields=["status", "finished_at"])
    audit_record(
        actor=actor,
        action=AuditAction(f"dead_letter.bulk_{action.kind}.cancel"),
        target=f"bulk_action:{action.pk}",
        details={"handled": action.handled, "of": action.total},
    )
    return action


def bulk_action_step(*, action_id: int, budget: int) -> BulkAction:
    """Handle up to ``budget`` more letters of a running action, its row locked for the step; finish it at the end.

    Each letter is handled in a savepoint of its own. The counts and the report are saved once
    per step, not once per letter: the report grows with every letter, and rewriting it each
    time made a large action quadratic. A cancel takes effect at the next step (the worker
    steps every 200 ms).
    """
    with transaction.atomic():
        # The action's row is locked for the step: a second worker skips it (PostgreSQL) or waits
        # its turn and reads the counts the first one saved (SQLite's one writer), so no letter
        # is handled twice and the report counts each once. Each letter's replay sends on commit.
        action = (
            BulkAction.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("requested_by", "topic")
            .filter(pk=action_id)
            .first()
        )
        if action is None:  # another worker is stepping it
            return BulkAction.objects.get(pk=action_id)
        if action.status != BulkActionStatus.RUNNING:
            return action
        for letter_id in action.letter_ids[action.handled : action.handled + budget]:
            outcome, detail = _bulk_handle(action, letter_id)
            action.handled += 1
            if outcome == "skipped":
                action.skipped += 1
            else:
                action.succeeded += 1
            action.report.append({"letter": letter_id, "outcome": outcome, "detail": detail})
        action.save(update_fields=["handled", "succeeded", "skipped", "report"])  # never the status: a cancel stands
    if action.handled >= action.total:
        with transaction.atomic():
            finished = BulkAction.objects.filter(pk=action.pk, status=BulkActionStatus.RUNNING).update(
                status=BulkActionStatus.DONE, finished_at=timezone.now()
            )
            if finished:
                audit_record(
                    actor=action.requested_by,
                    action=AuditAction(f"dead_letter.bulk_{action.kind}.done"),
                    target=f"bulk_action:{action.pk}",
                    details={"succeeded": action.succeeded, "skipped": action.skipped},
                )
        action.refresh_from_db(fields=["status", "finished_at"])
    return action


def _bulk_handle(action: BulkAction, letter_id: int) -> tuple[str, str]:
    """Replay or discard one letter of a bulk action: the outcome and a word on it."""
    actor = action.requested_by
    try:
        if action.kind == BulkActionKind.DISCARD:
            dead_letter_discard(letter_id=letter_id, actor=actor, reason=action.reason)
            return "discarded", ""
        letter = DeadLetter.objects.select_related("topic").get(pk=letter_id)
        kind, payload = dead_letter_contents(letter)
        if kind is None or payload is None:
            return "skipped", "its body has no event type and payload to replay: fix it on its own page"
        event = dead_letter_replay(letter_id=letter_id, event_type=kind, payload=payload, actor=actor)
    except BusInputError as refused:
        return "skipped", errors_joined(refused.errors[:5])
    return "replayed", event.envelope_id


def bulk_actions_running() -> list[int]:
    """The ids of the bulk actions the worker should advance."""
    return list(BulkAction.objects.filter(status=BulkActionStatus.RUNNING).values_list("id", flat=True))


# Housekeeping the bus worker runs.


def idempotency_keys_purge(*, now: dt.datetime | None = None) -> int:
    """Forget idempotency keys older than their lifetime (a day); returns how many."""
    cutoff = (now or timezone.now()) - IdempotencyKey.LIFETIME
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=cutoff).delete()
    return deleted
