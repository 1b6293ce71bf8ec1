"""Publishing: events validated, recorded with their audit entries, and sent once committed (one or a batch)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from busapp.audit import Actor, AuditRecord, actor_parts, audit_append
from busapp.dead_letter_causes import cause_of
from busapp.errors import (
    ApprovalRequiredError,
    EventRejectedError,
    FieldError,
    PayloadTooLargeError,
)
from busapp.models import (
    AuditAction,
    DeadLetter,
    Event,
    EventStatus,
    IdempotencyKey,
    SchemaVersion,
    Source,
    Topic,
)
from busapp.publishing import envelope_head, envelope_wire, send_on_commit
from busapp.selectors import ActiveVersions, envelopes_sha256, schema_version_active, topic_get
from busapp.store.instances import instance_like
from busapp.validation import (
    json_parse,
    payload_encoded,
    payload_errors,
    payload_json,
    payload_schema_errors,
    payload_size_error,
)


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
        event = instance_like(first)
        event.envelope_id, event.envelope = envelope_wire(head=head, payload_json=encoded)
        event.payload = payload
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


def batch_audit_record(action: AuditAction, *, topic: str, source: str, events: Sequence[Event]) -> AuditRecord:
    """The one audit entry of events accepted together (a batch publish, a tap batch): which, and their digest."""
    return AuditRecord(
        action,
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
    audit_append(actor=actor, records=[record], rows=[event])  # one step: on PostgreSQL one statement
    send_on_commit(events=[event])
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
    cause = cause_of(errors, arrived.get("type") if isinstance(arrived, dict) else None)
    return DeadLetter(
        topic=topic,
        raw=raw,
        errors=errors,
        event_type_name=cause.event_type,
        cause_path=cause.path,
        cause_message=cause.message,
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
        DeadLetter.objects.bulk_create(outcome.dead_letters)
        # One entry for the batch, the one action it is, naming every event it accepted.
        batch = batch_audit_record(AuditAction.EVENT_PUBLISH_BATCH, topic=topic, source=source, events=outcome.events)
        records = [batch] if outcome.events else []
        records += [dead_letter_audit_record(letter) for letter in outcome.dead_letters]
        audit_append(actor=actor, records=records, rows=outcome.events)
        send_on_commit(events=outcome.events, dead_letters=outcome.dead_letters)
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


def idempotency_keys_purge(*, now: dt.datetime | None = None) -> int:
    """Forget idempotency keys older than their lifetime (a day); returns how many."""
    cutoff = (now or timezone.now()) - IdempotencyKey.LIFETIME
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=cutoff).delete()
    return deleted
