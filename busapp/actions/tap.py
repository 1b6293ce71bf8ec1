"""What the tap writes: history rows for valid bus entries, dead letters for the rest, and their audit entries.

The bus worker's only state changes (``worker.tap`` reads, this writes). Synchronous (it runs
in Django's sync thread): one transaction per batch, each envelope id
recorded once whichever worker reads it, and one bad entry never holds up the others.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, DataError, IntegrityError, transaction
from django.utils import timezone

from busapp.actions.publishing import batch_audit_record, dead_letter_audit_record, dead_letter_build, envelopes_digest
from busapp.audit import AuditRecord, audit_append
from busapp.errors import FieldError, survivable
from busapp.live import live_item, live_item_read, topic_group
from busapp.models import AuditAction, DeadLetter, Event, EventStatus, SchemaVersion, Source, Topic
from busapp.publishing import INGEST_STREAM, StreamEntry
from busapp.selectors import ActiveVersions
from busapp.store import RecordedEvent, store
from busapp.store.instances import instance_like
from busapp.validation import envelope_errors, json_parse, payload_errors, payload_json

logger = logging.getLogger(__name__)

# An entry delivered more than this many times (read once, then claimed three times from workers
# that stopped while holding it) without being recorded is dead-lettered unread at its next
# claim: handling it may be what stops them.
MAX_DELIVERIES = 4
RAW_KEEP_BYTES = 1024 * 1024
EXTERNAL_ACTOR = "external"


@dataclass
class TapOutcome:
    """What one batch recorded: live items per Channels group, dead letters to send, events seen while pending."""

    groups: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # (event id, stream id) of events read off the bus while their rows still said pending.
    seen_pending: list[tuple[int, str]] = field(default_factory=list)

    def merge(self, other: TapOutcome) -> None:
        """Add what another batch recorded."""
        for group, items in other.groups.items():
            self.groups[group].extend(items)
        self.dead_letters.extend(other.dead_letters)
        self.seen_pending.extend(other.seen_pending)


def _decode(entry: StreamEntry) -> tuple[dict[str, Any] | None, list[FieldError]]:
    """Parse an entry's body as the seed's envelope; return it or the errors. Never raises."""
    if len(entry.body) > RAW_KEEP_BYTES:
        return None, [{"path": "", "message": f"is {len(entry.body):,} bytes; far over the payload limit"}]
    # UTF-8 only (json.loads would take UTF-16 and -32 too), nesting, NUL, surrogates: never raises.
    envelope, errors = json_parse(entry.body, around=1)
    if errors:
        return None, errors
    try:
        errors = envelope_errors(envelope)
    except BaseException as error:  # whatever arrived, it is dead-lettered, not fatal
        if not survivable(error):
            raise
        return None, [_unprocessable(error)]
    return (envelope, []) if not errors else (None, errors)


def _unprocessable(error: BaseException) -> FieldError:
    """The dead letter's error for an entry whose handling failed: ``could not be processed: <reason>``."""
    reason = "nests too deeply" if isinstance(error, RecursionError) else f"{type(error).__name__}: {error}"
    return {"path": "", "message": f"could not be processed: {reason}"[:1000]}


class _ExternalEvents:
    """A batch's history rows for events from external publishers.

    The first of each schema version is built, the rest are copies of it with their own
    envelope (a model instance cost the tap more than validating its payload).
    """

    def __init__(self, now: dt.datetime) -> None:
        self.now = now
        self.first: dict[int, Event] = {}  # by schema version

    def build(self, entry: StreamEntry, envelope: dict[str, Any], version: SchemaVersion) -> Event:
        """The history row of one valid entry."""
        first = self.first.get(version.pk)
        if first is None:
            event = self.first[version.pk] = Event(
                topic=version.event_type.topic,
                event_type=version.event_type,
                schema_version=version,
                source=Source.EXTERNAL,
                publisher_name=EXTERNAL_ACTOR,
                status=EventStatus.PUBLISHED,
                published_at=self.now,
                # Nobody approved it: on a topic sensitive now (read with the version, this batch) it is marked so.
                not_approved=version.event_type.topic.sensitive,
            )
        else:
            event = instance_like(first)
        event.envelope_id = envelope["id"]
        event.payload = envelope["payload"]
        event.envelope = entry.body.decode()
        event.timestamp = dt.datetime.fromtimestamp(envelope["timestamp"], tz=dt.UTC)
        event.stream_id = entry.entry_id if entry.stream != INGEST_STREAM else ""
        return event


def tap_record(entries: list[StreamEntry]) -> TapOutcome:
    """Record a batch of bus entries in history once each; dead-letter what fails validation or cannot be handled.

    The batch is written in one transaction. Should that fail for something one entry holds
    (a value the database refuses, another worker recording the same id at the same moment,
    any error of ours), each entry is handled on its own, so that one entry never holds up
    the others, and what still fails is dead-lettered. A database that does not answer is
    another matter: the error rises, nothing is acknowledged, and the loop tries again.
    """
    worn = [entry for entry in entries if entry.deliveries > MAX_DELIVERIES]
    entries = [entry for entry in entries if entry.deliveries <= MAX_DELIVERIES]
    outcome = TapOutcome()
    for entry in worn:
        times = f"delivered {entry.deliveries} times without being recorded (workers stopped while handling it)"
        outcome.merge(_tap_dead_letter(entry, {"path": "", "message": f"could not be processed: {times}"}))
    try:
        outcome.merge(_tap_record_once(entries))
        return outcome
    except (IntegrityError, DataError) as error:
        logger.info("tap: a batch of %d needs recording one by one (%s)", len(entries), error)
    except DatabaseError:
        raise
    except BaseException as error:
        if not survivable(error):
            raise
        logger.exception("tap: a batch of %d failed; recording its entries one by one", len(entries))
    for entry in entries:
        outcome.merge(_tap_record_alone(entry))
    return outcome


def _tap_record_alone(entry: StreamEntry) -> TapOutcome:
    """Record one entry on its own; dead-letter it with the reason when that fails for anything but an outage."""
    try:
        return _tap_record_once([entry])
    except IntegrityError:
        pass  # another worker recorded it meanwhile: a second look finds it in history
    except DatabaseError as error:
        if not isinstance(error, DataError):
            raise
        return _tap_dead_letter(entry, _unprocessable(error))
    except BaseException as error:
        if not survivable(error):
            raise
        logger.exception("tap: entry %s could not be processed; dead-lettered", entry.origin)
        return _tap_dead_letter(entry, _unprocessable(error))
    try:
        return _tap_record_once([entry])
    except (IntegrityError, DataError) as error:
        return _tap_dead_letter(entry, _unprocessable(error))


def _tap_dead_letter(entry: StreamEntry, error: FieldError) -> TapOutcome:
    """Dead-letter an entry as it arrived, with the error, in a transaction of its own (once per origin)."""
    outcome = TapOutcome()
    topic = Topic.objects.filter(name=entry.channel).first()
    if topic is None:
        logger.warning("entry %s: unknown channel %r; acknowledged, ignored", entry.origin, entry.channel)
        return outcome
    if DeadLetter.objects.filter(origin=entry.origin).exists():
        return outcome
    letter = _external_dead_letter(entry, topic, [error])
    try:
        with transaction.atomic():
            letter.save()
            audit_append(actor=EXTERNAL_ACTOR, records=[dead_letter_audit_record(letter)])
    except DataError:
        # Kept safe for the database already (no NUL, no lone surrogate): should it still refuse,
        # the log keeps what arrived, and the entry is acknowledged rather than retried for ever.
        logger.exception("entry %s could not be kept as a dead letter; it was %r", entry.origin, entry.body[:2000])
        return outcome
    outcome.dead_letters.append(letter)
    return outcome


def _tap_record_once(entries: list[StreamEntry]) -> TapOutcome:
    """One attempt of ``tap_record``: read what is known, then write what is new in one transaction.

    Most entries are the dashboard's own events, already recorded: for those the tap reads
    one row each without the ORM (its live item is built from the envelope it read), and
    takes SQLite's write lock (an IMMEDIATE transaction) only when there is something to
    write, so publishers are not kept waiting by a batch that changes nothing. Another
    worker recording the same id in between makes the insert fail, and ``tap_record`` retries.
    """
    outcome = TapOutcome()
    decoded = [(entry, *_decode(entry)) for entry in entries]
    recorded = store().events_recorded({envelope["id"] for _, envelope, _ in decoded if envelope is not None})
    unknown = [
        (entry, envelope, errors)
        for entry, envelope, errors in decoded
        if not _known_on_bus(entry, envelope, recorded, outcome)
    ]
    if not unknown:
        return outcome
    now = timezone.now()
    topics = {topic.name: topic for topic in Topic.objects.filter(name__in={entry.channel for entry, _, _ in unknown})}
    origins = {entry.origin for entry, envelope, _ in unknown if envelope is None}
    seen_letters = (
        set(DeadLetter.objects.filter(origin__in=origins).values_list("origin", flat=True)) if origins else set()
    )
    versions = ActiveVersions()
    external = _ExternalEvents(now)
    new_events: dict[str, Event] = {}
    for entry, envelope, errors in unknown:
        topic = topics.get(entry.channel)
        if topic is None:
            logger.warning("entry %s: unknown channel %r; acknowledged, ignored", entry.origin, entry.channel)
            continue
        if envelope is not None and envelope["id"] in new_events:
            continue  # read twice in one batch (its stream entry and its Pub/Sub copy)
        if envelope is not None:
            version, errors = _checked(versions, topic, envelope)
            if version is not None:
                event = new_events[envelope["id"]] = external.build(entry, envelope, version)
                outcome.groups[topic_group(topic.name)].append(live_item(event, read_from_bus=True))
                continue
        if entry.origin not in seen_letters:
            seen_letters.add(entry.origin)
            letter = _external_dead_letter(entry, topic, errors)
            outcome.dead_letters.append(letter)
    if new_events or outcome.dead_letters:
        with transaction.atomic():
            store().rows_insert(list(new_events.values()))
            DeadLetter.objects.bulk_create(outcome.dead_letters)
            records = _record_audit_records(list(new_events.values()))
            records += [dead_letter_audit_record(letter) for letter in outcome.dead_letters]
            if records:
                audit_append(actor=EXTERNAL_ACTOR, records=records)
    return outcome


def _checked(
    versions: ActiveVersions, topic: Topic, envelope: dict[str, Any]
) -> tuple[SchemaVersion | None, list[FieldError]]:
    """The version an envelope is accepted under, or why not (unknown type, a disabled version, its payload)."""
    version = versions.get(topic.name, envelope["type"])
    if isinstance(version, list):
        return None, version
    named = envelope.get("schema_version", version.version)
    errors = versions.disabled_errors(version, named) if named != version.version else []
    errors = errors or _payload_errors_of(version, envelope["payload"])
    return (None, errors) if errors else (version, [])


def _payload_errors_of(version: SchemaVersion, payload: Any) -> list[FieldError]:
    """The payload's errors under its schema; a schema or payload that breaks validation itself is one error.

    The payload came out of ``json_parse``, which refused NUL, lone surrogates and depth in its
    text already: only its size is checked again, not its text.
    """
    try:
        return payload_errors(version, payload, encoded=payload_json(payload))
    except BaseException as error:  # a $ref cycle, a value that cannot be encoded, ...
        if not survivable(error):
            raise
        return [_unprocessable(error)]


def _known_on_bus(
    entry: StreamEntry, envelope: dict[str, Any] | None, recorded: dict[str, RecordedEvent], outcome: TapOutcome
) -> bool:
    """Whether the entry is an event history holds; if read from its topic's stream, its live item goes out.

    A Pub/Sub copy of a recorded event (on the ingest stream) adds nothing.
    """
    found = recorded.get(envelope["id"]) if envelope is not None else None
    if envelope is None or found is None:
        return False
    if entry.stream != INGEST_STREAM:
        outcome.groups[topic_group(entry.channel)].append(
            live_item_read(
                envelope, len(entry.body), topic=entry.channel, source=found.source, publisher=found.publisher
            )
        )
        if found.status == EventStatus.PENDING:
            outcome.seen_pending.append((found.pk, entry.entry_id))
    return True


def events_seen_published(seen: dict[int, str]) -> int:
    """Mark published those of these events (id: stream id) still pending: sent, but their sender never said so.

    How many it marked. Normally none: a sender marks its events a moment after sending.
    """
    pending = list(Event.objects.filter(pk__in=list(seen), status=EventStatus.PENDING).values_list("pk", flat=True))
    if not pending:
        return 0
    now = timezone.now()
    with transaction.atomic():
        for pk in pending:
            Event.objects.filter(pk=pk, status=EventStatus.PENDING).update(
                status=EventStatus.PUBLISHED, stream_id=seen[pk], published_at=now
            )
    return len(pending)


def _external_dead_letter(entry: StreamEntry, topic: Topic, errors: list[FieldError]) -> DeadLetter:
    """A dead letter for what arrived on the bus and failed validation, kept as it arrived."""
    return dead_letter_build(
        topic=topic,
        raw=_storable(entry.body[:RAW_KEEP_BYTES].decode(errors="replace")),
        errors=[{"path": _storable(error["path"]), "message": _storable(error["message"])} for error in errors],
        source=Source.EXTERNAL,
        actor=EXTERNAL_ACTOR,
        origin=entry.origin,
    )


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _storable(text: str) -> str:
    """Text every database keeps: NUL (refused by PostgreSQL) and lone surrogates (by UTF-8) shown as U+FFFD."""
    return _UNSTORABLE.sub("\ufffd", text)


def _record_audit_records(events: list[Event]) -> list[AuditRecord]:
    """The audit entries that say the tap recorded events from external publishers: one per topic.

    A lone event has an entry of its own; several of a topic, one entry naming them all with
    their envelopes' digest, as a batch publish has (an entry per event was half the tap's time).
    """
    by_topic: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_topic[event.topic.name].append(event)
    return [
        _record_audit_record(group[0])
        if len(group) == 1
        else batch_audit_record(AuditAction.EVENT_RECORD_BATCH, topic=topic, source=Source.EXTERNAL.value, events=group)
        for topic, group in by_topic.items()
    ]


def _record_audit_record(event: Event) -> AuditRecord:
    """The audit entry that says the tap recorded an event from an external publisher."""
    return AuditRecord(
        AuditAction.EVENT_RECORD,
        f"event:{event.envelope_id}",
        {
            "topic": event.topic.name,
            "type": event.event_type.name,
            "stream_id": event.stream_id,
            "envelope_sha256": envelopes_digest([event]),
        },
    )
