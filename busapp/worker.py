"""The bus worker: relay (pending events to Redis), tap (Redis to history and DLQ), fan-out (to browsers), scheduler.

One asyncio loop; every database step runs in Django's one sync thread through
``sync_to_async``. The tap reads topic streams and the ingest stream (what the workers'
Pub/Sub listeners heard from seed-style publishers, copied once by the first to hear it)
through a consumer group, records each envelope id once, and acknowledges an entry only
after its history row committed. Every loop is supervised; each entry is handled on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import inspect
import json
import logging
import os
import re
import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    DataError,
    IntegrityError,
    connection,
    connections,
    transaction,
)
from django.utils import timezone
from redis.exceptions import LockError, RedisError, ResponseError

from busapp.audit import AuditRecord, ChainReport, audit_append, audit_verify
from busapp.grants import grants_expire
from busapp.heartbeats import (
    FORGET_AFTER_SECONDS,
    HEARTBEAT_EVERY_SECONDS,
    WORKERS_KEY,
    LoopState,
    WorkerBeat,
    beat_decode,
)
from busapp.live import bulk_group, dlq_group, live_item, live_item_read, live_message, topic_group
from busapp.models import AuditAction, BulkAction, DeadLetter, Event, EventStatus, SchemaVersion, Source, Topic
from busapp.publishing import INGEST_STREAM, STREAM_PREFIX, dead_letters_send, relay_pending, stream_key
from busapp.redis_connections import bus_async_client_new
from busapp.rows import driver_cursor, rows_insert
from busapp.selectors import ActiveVersions
from busapp.services import (
    bulk_action_step,
    bulk_actions_running,
    dead_letter_audit_record,
    dead_letter_build,
    envelopes_digest,
    idempotency_keys_purge,
    publish_requests_due,
)
from busapp.validation import FieldError, envelope_errors, json_parse, payload_errors, payload_json

logger = logging.getLogger(__name__)

GROUP = "hms-bus-admin"
READ_COUNT = 500
# An entry delivered more than this many times (read once, then claimed three times from workers
# that stopped while holding it) without being recorded is dead-lettered unread at its next
# claim: handling it may be what stops them.
MAX_DELIVERIES = 4
# Every worker listens to Pub/Sub, so a killed one leaves no gap; the first to copy a message into
# the ingest stream leaves a mark (``hms:heard:<digest>``) that tells the others it is there.
HEARD_MARK_PREFIX = "hms:heard:"
HEARD_MARK_SECONDS = 300
# Periodic jobs that must not run twice at once (tidy, the audit check) hold a Redis lease while they run.
LEASE_PREFIX = "hms:lease:"
TIDY_LEASE_SECONDS = 60
AUDIT_CHECK_LEASE_SECONDS = 3600
# Seconds: at most one group_send per topic this often. A batch spans at most 25 ms, within
# the "batch of at most 100 ms" rule: at most 40 group messages a second per topic
# (channels-redis delivers about 950 a second). Against 50 ms it took the p99 of 50 live
# pages at 1,000 events/s from 130-171 ms to 74-86 ms, for about 15% more of a core in the web
# server (bench/README.md, live.py).
FANOUT_INTERVAL = 0.025
TOPIC_REFRESH_SECONDS = 5.0
# A stopped worker's entries are claimed once idle BUS_CLAIM_IDLE_MS, at the next look: an XAUTOCLAIM
# per stream, cheap with nothing to take, so looked for often (at 30 s, they waited up to 30 s more).
CLAIM_EVERY_SECONDS = 5.0
RELAY_EVERY_SECONDS = 0.5
SCHEDULE_EVERY_SECONDS = 1.0
# Expired grants are written down and removed (the checks ignore them already), old idempotency keys forgotten.
TIDY_EVERY_SECONDS = 30.0
# The audit chain: new entries checked every minute, the whole chain every hour.
AUDIT_CHECK_EVERY_SECONDS = 60.0
AUDIT_FULL_CHECK_EVERY_SECONDS = 3600.0
# Events read off the bus while their rows said pending are checked again after this, well within
# BUS_RELAY_GRACE_SECONDS (5 s): by then their sender has marked them, unless it died.
SEEN_PENDING_SETTLE_SECONDS = 1.0
# SQLite: the WAL is copied into the database this often (settings.py: publishers then never do).
CHECKPOINT_EVERY_SECONDS = 1.0
BULK_TICK_SECONDS = 0.2
INGEST_MAXLEN = 100_000
# The Pub/Sub listener gathers what seed-style publishers send for this long before one look at history.
LISTEN_GATHER_SECONDS = 0.02
RAW_KEEP_BYTES = 1024 * 1024
EXTERNAL_ACTOR = "external"
# A supervised loop that fails is started again after this, doubling up to the most.
RESTART_BACKOFF_SECONDS = 0.5
RESTART_BACKOFF_MOST_SECONDS = 30.0
# Envelope ids in one IN (...) list: within every database's limit of bound values.
_IDS_PER_QUERY = 500

T = TypeVar("T")

# Copy heard Pub/Sub messages into the ingest stream, each once whichever worker heard it first.
# KEYS[1]: the ingest stream, then per message its heard mark. ARGV[1]: the marks' lifetime,
# ARGV[2]: the stream's length; then per message its channel and data. Answers how many it added.
_INGEST_ONCE = """
local added = 0
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], 1, 'NX', 'EX', ARGV[1]) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'channel', ARGV[2 * i - 1], 'data', ARGV[2 * i])
    added = added + 1
  end
end
return added
"""


@dataclass(frozen=True)
class StreamEntry:
    """One entry read from a Redis stream: which stream, its id, the channel it belongs to, its body."""

    stream: str
    entry_id: str
    channel: str
    body: bytes
    # Times Redis handed it to a worker of the group: 1 when read, one more for each claim.
    deliveries: int = 1

    @property
    def origin(self) -> str:
        """Where it was read, unique across the bus: ``stream:tax-policy:1700000000000-0``."""
        return f"{self.stream}:{self.entry_id}"


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


def entries_from_reply(reply: Any) -> list[StreamEntry]:
    """Flatten an XREADGROUP/XAUTOCLAIM reply into entries, mapping each stream to its channel."""
    entries = []
    for raw_stream, messages in reply or []:
        stream = raw_stream.decode() if isinstance(raw_stream, bytes) else raw_stream
        for raw_id, fields in messages:
            entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            if stream == INGEST_STREAM:
                channel = fields.get(b"channel", b"").decode(errors="replace")
                body = fields.get(b"data", b"")
            else:
                channel = stream.removeprefix(STREAM_PREFIX)
                body = fields.get(b"event", b"")
            entries.append(StreamEntry(stream, entry_id, channel, body))
    return entries


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
        if not _survivable(error):
            raise
        return None, [_unprocessable(error)]
    return (envelope, []) if not errors else (None, errors)


def _survivable(error: BaseException) -> bool:
    """Whether an entry's or a loop's error is survived: any exception, or a panic under jsonschema (not a cancel)."""
    return not isinstance(error, asyncio.CancelledError | KeyboardInterrupt | SystemExit | GeneratorExit)


def _unprocessable(error: BaseException) -> FieldError:
    """The dead letter's error for an entry whose handling failed: ``could not be processed: <reason>``."""
    reason = "nests too deeply" if isinstance(error, RecursionError) else f"{type(error).__name__}: {error}"
    return {"path": "", "message": f"could not be processed: {reason}"[:1000]}


def _external_event(entry: StreamEntry, envelope: dict[str, Any], version: SchemaVersion, now: dt.datetime) -> Event:
    """A history row for a valid event that a publisher outside the dashboard put on the bus."""
    return Event(
        envelope_id=envelope["id"],
        topic=version.event_type.topic,
        event_type=version.event_type,
        schema_version=version,
        payload=envelope["payload"],
        envelope=entry.body.decode(),
        timestamp=dt.datetime.fromtimestamp(envelope["timestamp"], tz=dt.UTC),
        source=Source.EXTERNAL,
        publisher_name=EXTERNAL_ACTOR,
        status=EventStatus.PUBLISHED,
        stream_id=entry.entry_id if entry.stream != INGEST_STREAM else "",
        published_at=now,
        # Nobody approved it: on a topic sensitive now (read with the version, this batch) it is marked so.
        not_approved=version.event_type.topic.sensitive,
    )


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
        if not _survivable(error):
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
        if not _survivable(error):
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
    outcome.groups[dlq_group(topic.name)].append(
        {"topic": topic.name, "errors": letter.errors, "received_at": letter.received_at.timestamp()}
    )
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
    recorded = events_recorded({envelope["id"] for _, envelope, _ in decoded if envelope is not None})
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
    new_events: dict[str, Event] = {}
    for entry, envelope, errors in unknown:
        topic = topics.get(entry.channel)
        if topic is None:
            logger.warning("entry %s: unknown channel %r; acknowledged, ignored", entry.origin, entry.channel)
            continue
        if envelope is not None and envelope["id"] in new_events:
            continue  # read twice in one batch (its stream entry and its Pub/Sub copy)
        if envelope is not None:
            version = versions.get(topic.name, envelope["type"])
            errors = version if isinstance(version, list) else _payload_errors_of(version, envelope["payload"])
            if not errors and isinstance(version, SchemaVersion):
                event = new_events[envelope["id"]] = _external_event(entry, envelope, version, now)
                outcome.groups[topic_group(topic.name)].append(live_item(event, read_from_bus=True))
                continue
        if entry.origin not in seen_letters:
            seen_letters.add(entry.origin)
            letter = _external_dead_letter(entry, topic, errors)
            outcome.dead_letters.append(letter)
            outcome.groups[dlq_group(topic.name)].append(
                {"topic": topic.name, "errors": errors, "received_at": letter.received_at.timestamp()}
            )
    if new_events or outcome.dead_letters:
        with transaction.atomic():
            rows_insert(list(new_events.values()))
            DeadLetter.objects.bulk_create(outcome.dead_letters)
            records = [_record_audit_record(event) for event in new_events.values()]
            records += [dead_letter_audit_record(letter) for letter in outcome.dead_letters]
            if records:
                audit_append(actor=EXTERNAL_ACTOR, records=records)
    return outcome


def _payload_errors_of(version: SchemaVersion, payload: Any) -> list[FieldError]:
    """The payload's errors under its schema; a schema or payload that breaks validation itself is one error.

    The payload came out of ``json_parse``, which refused NUL, lone surrogates and depth in its
    text already: only its size is checked again, not its text.
    """
    try:
        return payload_errors(version, payload, encoded=payload_json(payload))
    except BaseException as error:  # a $ref cycle, a value that cannot be encoded, ...
        if not _survivable(error):
            raise
        return [_unprocessable(error)]


@dataclass(frozen=True)
class RecordedEvent:
    """What the tap needs of an event history already holds."""

    pk: int
    status: str
    source: str
    publisher: str


def events_recorded(envelope_ids: set[str]) -> dict[str, RecordedEvent]:
    """The events history holds among these envelope ids, by id: one indexed query, without the ORM.

    The tap asks this for every batch it reads, most of them the dashboard's own events;
    building the same query through the ORM cost more than running it.
    """
    found: dict[str, RecordedEvent] = {}
    ids = list(envelope_ids)
    table = Event._meta.db_table
    with driver_cursor() as cursor:
        for start in range(0, len(ids), _IDS_PER_QUERY):
            chunk = ids[start : start + _IDS_PER_QUERY]
            cursor.execute(
                f"SELECT envelope_id, id, status, source, publisher_name FROM {table}"  # noqa: S608 (names, not input)
                f" WHERE envelope_id IN ({', '.join(['%s'] * len(chunk))})",
                chunk,
            )
            for envelope_id, pk, status, source, publisher in cursor.fetchall():
                found[envelope_id] = RecordedEvent(pk, status, source, publisher)
    return found


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


def _record_audit_record(event: Event) -> AuditRecord:
    """The audit entry that says the tap recorded an event published outside the dashboard."""
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


class FanOut:
    """Coalesces live items per Channels group: at most one ``group_send`` per group every FANOUT_INTERVAL (25 ms)."""

    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.buffers: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.last_sent: dict[str, float] = {}
        self.scheduled: dict[str, asyncio.TimerHandle] = {}
        self.sending: set[asyncio.Task[None]] = set()

    def add(self, groups: dict[str, list[dict[str, Any]]]) -> None:
        """Queue items; each group is sent now, or FANOUT_INTERVAL after its last send."""
        loop = asyncio.get_running_loop()
        for group, items in groups.items():
            self.buffers[group].extend(items)
            if group in self.scheduled:
                continue
            delay = max(0.0, self.last_sent.get(group, -FANOUT_INTERVAL) + FANOUT_INTERVAL - loop.time())
            self.scheduled[group] = loop.call_later(delay, self._start_send, group)

    def _start_send(self, group: str) -> None:
        """Timer callback: send the group's buffer in a task."""
        task = asyncio.ensure_future(self._send(group))
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)

    async def _send(self, group: str) -> None:
        """One ``group_send`` with everything buffered for the group."""
        self.scheduled.pop(group, None)
        items = self.buffers.pop(group, [])
        self.last_sent[group] = asyncio.get_running_loop().time()
        if not items or self.layer is None:
            return
        feed, topic = group.split(".", 1)
        message = live_message("bus.events" if feed == "topic" else "bus.dead_letters", topic, items)
        try:
            await self.layer.group_send(group, message)
        except Exception:  # live view is best effort; history has every event
            logger.exception("fan-out to %s failed (%d items); history has them", group, len(items))

    async def flush(self) -> None:
        """Send everything still buffered now (on stop)."""
        for group, handle in list(self.scheduled.items()):
            handle.cancel()
            await self._send(group)
        if self.sending:
            await asyncio.gather(*self.sending, return_exceptions=True)


async def in_db(function: Callable[..., T], *args: Any) -> T:
    """Run a database function in Django's sync thread, dropping a broken connection first."""

    def call() -> T:
        _broken_connections_close()
        return function(*args)

    return await sync_to_async(call, thread_sensitive=True)()


def _broken_connections_close() -> None:
    """Close this thread's connections that failed and no longer answer; the next query opens a new one.

    Not ``close_old_connections``: with ``DATABASE_CONN_MAX_AGE=0`` it closes every connection
    every time, and the worker opened a new SQLite connection for each batch it tapped, a
    tenth of its CPU at 1,000 events/s (bench/README.md, live.py).
    """
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and conn.errors_occurred and not conn.in_atomic_block:
            if conn.is_usable():
                conn.errors_occurred = False
            else:
                conn.close()


def _bulk_tick(action_id: int) -> BulkAction:
    """One tick's share of a bulk action: its rate times the tick, at least one letter."""
    rate = BulkAction.objects.values_list("rate_per_second", flat=True).get(pk=action_id)
    return bulk_action_step(action_id=action_id, budget=max(1, round(rate * BULK_TICK_SECONDS)))


def _topic_names() -> list[str]:
    """Every topic's name."""
    return list(Topic.objects.values_list("name", flat=True))


class BusWorker:
    """Relay, tap and fan-out in one process; several may run, sharing the streams through a consumer group."""

    def __init__(self, *, name: str | None = None, claim_idle_ms: int | None = None) -> None:
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = settings.BUS_CLAIM_IDLE_MS if claim_idle_ms is None else claim_idle_ms
        self.redis = bus_async_client_new(socket_connect_timeout=1)
        self.stopping = asyncio.Event()
        self.fanout = FanOut()
        self.streams: list[str] = []
        self.topics: list[str] = []
        # Events read off the bus while their rows said pending: event id -> (stream id, loop time seen).
        self.seen_pending: dict[int, tuple[str, float]] = {}
        # Each loop's state and errors, told to Redis by every heartbeat.
        self.loops: dict[str, LoopState] = {}
        self.started_at = time.time()
        self._ingest_once = self.redis.register_script(_INGEST_ONCE)

    def stop(self) -> None:
        """Ask every loop to finish what it holds and return."""
        self.stopping.set()

    async def _pause(self, seconds: float) -> None:
        """Sleep, waking early when asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def run(self) -> None:
        """Run every loop, each supervised, until ``stop()``; nothing is left half-done."""
        loops: dict[str, Callable[[], Awaitable[None]]] = {
            "tap": self._tap_loop,
            "relay": self._relay_loop,
            "listener": self._listen_loop,
            "scheduler": self._schedule_loop,
            "bulk": self._bulk_loop,
            "audit-check": self._audit_check_loop,
            "checkpoint": self._checkpoint_loop,
            "tidy": self._tidy_loop,
            "heartbeat": self._heartbeat_loop,
        }
        self.loops = {name: LoopState() for name in loops}
        tasks = [asyncio.create_task(self._supervise(name, loop)) for name, loop in loops.items()]
        try:
            await asyncio.gather(*tasks)
        finally:
            self.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.fanout.flush()
            with contextlib.suppress(DatabaseError):
                await self.settle_seen_pending(older_than=0.0)
            await self.redis.aclose()
            await sync_to_async(connections.close_all, thread_sensitive=True)()

    async def _supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a loop until stopped; when it fails, log the traceback, count it, and start it again after a backoff.

        Nothing a loop meets (a bug of ours, a message no one foresaw) ends the process or the other loops.
        """
        state = self.loops.setdefault(name, LoopState())
        backoff = RESTART_BACKOFF_SECONDS
        while not self.stopping.is_set():
            state.state = "running"
            started = time.monotonic()
            try:
                await loop()
            except BaseException as error:
                if not _survivable(error):
                    raise
                state.failed(error)
                if time.monotonic() - started > RESTART_BACKOFF_MOST_SECONDS:
                    backoff = RESTART_BACKOFF_SECONDS  # it ran well for a while: this is a new failure
                logger.exception("%s loop failed (%d so far); starting it again in %.1fs", name, state.errors, backoff)
                await self._pause(backoff)
                backoff = min(backoff * 2, RESTART_BACKOFF_MOST_SECONDS)
            else:
                break  # a loop returns only when stopping, or when it has nothing to do here
        state.state = "stopped"

    def _loop_failed(self, name: str, error: BaseException) -> None:
        """Count a failed step of a loop that retries on its own (Redis or the database did not answer)."""
        self.loops.setdefault(name, LoopState()).failed(error)

    def _loop_ok(self, name: str) -> None:
        """Say a loop's step went through."""
        self.loops.setdefault(name, LoopState()).state = "running"

    async def _heartbeat_loop(self) -> None:
        """Tell Redis every few seconds that this worker lives, and how its loops are; forget long-gone workers."""
        while not self.stopping.is_set():
            beat = WorkerBeat(self.name, time.time(), os.getpid(), self.started_at, self.loops)
            try:
                await self.redis.hset(WORKERS_KEY, self.name, beat.encode())
                for name, raw in (await self.redis.hgetall(WORKERS_KEY)).items():
                    other = beat_decode(name.decode(errors="replace") if isinstance(name, bytes) else name, raw)
                    if other is None or other.age() > FORGET_AFTER_SECONDS:
                        await self.redis.hdel(WORKERS_KEY, name)
                self._loop_ok("heartbeat")
            except (RedisError, OSError) as error:
                self._loop_failed("heartbeat", error)
            await self._pause(HEARTBEAT_EVERY_SECONDS)

    async def leased(self, job: str, seconds: int, step: Callable[[], Awaitable[T]]) -> T | None:
        """Run a step only while holding the job's Redis lease (one worker at a time); None when another holds it."""
        lease = self.redis.lock(f"{LEASE_PREFIX}{job}", timeout=seconds, blocking=False)
        if not await lease.acquire():
            return None
        try:
            return await step()
        finally:
            with contextlib.suppress(LockError, RedisError, OSError):
                await lease.release()  # gone with a restarted Redis, or expired: nothing to let go

    # The tap.

    async def refresh_topics(self) -> None:
        """Load the topic list and make sure each topic stream and the ingest stream have our group."""
        self.topics = await in_db(_topic_names)
        streams = [stream_key(name) for name in self.topics] + [INGEST_STREAM]
        for stream in set(streams) - set(self.streams):
            try:
                await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise
        self.streams = streams

    async def read(self, *, block_ms: int = 100) -> list[StreamEntry]:
        """Read new entries for this consumer (they stay pending until acknowledged)."""
        if not self.streams:
            await self.refresh_topics()
        reply = await self.redis.xreadgroup(
            GROUP, self.name, {stream: ">" for stream in self.streams}, count=READ_COUNT, block=block_ms
        )
        return entries_from_reply(reply)

    async def claim(self) -> list[StreamEntry]:
        """Take over up to a batch of entries another (dead) consumer read but never acknowledged."""
        if not self.streams:
            await self.refresh_topics()
        claimed: list[StreamEntry] = []
        for stream in self.streams:
            start = "0-0"
            while len(claimed) < READ_COUNT:
                reply = await self.redis.xautoclaim(
                    stream, GROUP, self.name, self.claim_idle_ms, start_id=start, count=READ_COUNT
                )
                start, messages = reply[0], reply[1]
                # Entries trimmed from the stream come back empty: nothing to record, just acknowledge.
                gone = [entry_id for entry_id, fields in messages if not fields]
                if len(reply) > 2:
                    gone.extend(reply[2])
                if gone:
                    await self.redis.xack(stream, GROUP, *gone)
                entries = entries_from_reply([(stream, [m for m in messages if m[1]])])
                claimed.extend(await self._with_deliveries(stream, entries))
                if start in (b"0-0", "0-0"):
                    break
            if len(claimed) >= READ_COUNT:
                break
        if claimed:
            logger.info("claimed %d entries left unacknowledged by a stopped worker", len(claimed))
        return claimed

    async def _with_deliveries(self, stream: str, entries: list[StreamEntry]) -> list[StreamEntry]:
        """The claimed entries with how many times Redis has delivered each (``XPENDING``, one call)."""
        if not entries:
            return entries
        pending = await self.redis.xpending_range(
            stream, GROUP, min=entries[0].entry_id, max=entries[-1].entry_id, count=len(entries), consumername=self.name
        )
        times = {
            (row["message_id"].decode() if isinstance(row["message_id"], bytes) else row["message_id"]): int(
                row["times_delivered"]
            )
            for row in pending
        }
        return [dataclasses.replace(entry, deliveries=times.get(entry.entry_id, 1)) for entry in entries]

    async def record(self, entries: list[StreamEntry]) -> TapOutcome:
        """Record entries in history (committed when this returns) and send their dead letters."""
        outcome = await in_db(tap_record, entries)
        if outcome.dead_letters:
            await in_db(dead_letters_send, outcome.dead_letters)
        return outcome

    async def ack(self, entries: list[StreamEntry]) -> None:
        """Acknowledge entries whose history rows are committed."""
        by_stream: dict[str, list[str]] = defaultdict(list)
        for entry in entries:
            by_stream[entry.stream].append(entry.entry_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, ids in by_stream.items():
                pipe.xack(stream, GROUP, *ids)
            await pipe.execute()

    async def handle(self, entries: list[StreamEntry]) -> TapOutcome:
        """Record, then acknowledge, then fan out: an entry is acknowledged only once its row is safe."""
        outcome = await self.record(entries)
        await self.ack(entries)
        self.fanout.add(outcome.groups)
        seen_at = asyncio.get_running_loop().time()
        for pk, stream_id in outcome.seen_pending:
            self.seen_pending.setdefault(pk, (stream_id, seen_at))
        return outcome

    async def settle_seen_pending(self, *, older_than: float = SEEN_PENDING_SETTLE_SECONDS) -> int:
        """Mark published the events seen on the bus this long ago whose rows still say pending; how many.

        Their sender died between its send and its published mark. Left pending, the relay would
        send them again once their grace ran out. Most events the tap reads are still pending
        for a moment (the sender marks them just after sending), so they wait here instead of
        each taking SQLite's write lock from the publishers at once.
        """
        cutoff = asyncio.get_running_loop().time() - older_than
        due: dict[int, str] = {}
        for pk, (stream_id, seen_at) in self.seen_pending.items():  # in the order seen, oldest first
            if seen_at > cutoff:
                break  # this loop runs after every read: it stops at the first one not yet due
            due[pk] = stream_id
        if not due:
            return 0
        marked = await in_db(events_seen_published, due)
        for pk in due:
            del self.seen_pending[pk]
        return marked

    async def _tap_loop(self) -> None:
        """Read, record, acknowledge, fan out; refresh topics and claim orphans now and then."""
        loop = asyncio.get_running_loop()
        next_refresh = next_claim = 0.0
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                if loop.time() >= next_refresh:
                    await self.refresh_topics()
                    next_refresh = loop.time() + TOPIC_REFRESH_SECONDS
                if loop.time() >= next_claim:
                    while (claimed := await self.claim()) and not self.stopping.is_set():
                        await self.handle(claimed)
                    next_claim = loop.time() + CLAIM_EVERY_SECONDS
                entries = await self.read()
                if entries:
                    await self.handle(entries)
                if await self.settle_seen_pending():
                    logger.info("tap: marked published events whose sender had not (it stopped after sending)")
                backoff = 0.5
                self._loop_ok("tap")
            except (RedisError, OSError) as error:
                self._loop_failed("tap", error)
                logger.warning("tap: Redis unavailable (%s); retrying in %.1fs", error, backoff)
                self.streams = []  # groups may be gone with a restarted Redis
                await self._pause(backoff)
                backoff = min(backoff * 2, 10.0)
            except DatabaseError as error:
                self._loop_failed("tap", error)
                logger.warning("tap: database error (%s); retrying in %.1fs", error, backoff)
                await self._pause(backoff)
                backoff = min(backoff * 2, 10.0)

    # The relay and the scheduler: database steps repeated while they find work.

    async def _relay_loop(self) -> None:
        """Send what is still pending, oldest first, backing off while Redis is down (rows locked: several may run)."""
        await self._repeat("relay", relay_pending, RELAY_EVERY_SECONDS, "sent %d pending event(s) and dead letter(s)")

    async def _schedule_loop(self) -> None:
        """Publish what was scheduled (and approved, where that is needed) once its time has come (rows locked)."""
        await self._repeat("scheduler", publish_requests_due, SCHEDULE_EVERY_SECONDS, "published %d scheduled event(s)")

    async def _tidy_loop(self) -> None:
        """Record and remove grants that ran out; forget idempotency keys a day old (one worker at a time)."""

        async def tidy_leased() -> int:
            return await self.leased("tidy", TIDY_LEASE_SECONDS, lambda: in_db(_tidy)) or 0

        await self._repeat(
            "tidy", tidy_leased, TIDY_EVERY_SECONDS, "removed %d expired grant(s) or old idempotency key(s)"
        )

    async def _repeat(
        self, name: str, step: Callable[[], int] | Callable[[], Awaitable[int]], pause: float, did: str
    ) -> None:
        """Run a step until stopped: again at once while it handles something, else after a pause."""
        while not self.stopping.is_set():
            try:
                handled = await step() if inspect.iscoroutinefunction(step) else await in_db(step)
                self._loop_ok(name)
            except (DatabaseError, RedisError, OSError) as error:
                self._loop_failed(name, error)
                what = "database error" if isinstance(error, DatabaseError) else "Redis unavailable"
                logger.warning("%s: %s (%s)", name, what, error)
                handled = 0
            if handled:
                logger.info(f"{name}: {did}", handled)
                continue
            await self._pause(pause)

    # The audit chain's check.

    async def _audit_check_loop(self) -> None:
        """Check the audit chain: the whole of it at start and hourly, the new entries every minute.

        In a thread of its own (with its own database connection), so a long check of a big
        log never holds up the tap or the relay.
        """
        last_full = -AUDIT_FULL_CHECK_EVERY_SECONDS
        while not self.stopping.is_set():
            full = time.monotonic() - last_full >= AUDIT_FULL_CHECK_EVERY_SECONDS
            check = functools.partial(sync_to_async(_audit_check, thread_sensitive=False), not full)
            try:
                report = await self.leased("audit-check", AUDIT_CHECK_LEASE_SECONDS, check)
            except Exception as error:  # a failed check is logged; it must not stop the relay and the tap
                self._loop_failed("audit-check", error)
                logger.exception("audit check failed")
            else:
                if report is None:
                    logger.info("audit check: another worker is checking the chain; this one waits its turn")
                else:
                    self._loop_ok("audit-check")
                    if full:
                        last_full = time.monotonic()
                    if not report.intact:
                        logger.error("audit log broken at entry #%s: %s", report.broken_seq, report.problem)
            await self._pause(AUDIT_CHECK_EVERY_SECONDS)

    async def _checkpoint_loop(self) -> None:
        """On SQLite, checkpoint the WAL every second from here, so that publishers never pay for it."""
        if connections[DEFAULT_DB_ALIAS].vendor != "sqlite":
            return
        while not self.stopping.is_set():
            try:
                await sync_to_async(wal_checkpoint, thread_sensitive=False)()
                self._loop_ok("checkpoint")
            except DatabaseError as error:
                self._loop_failed("checkpoint", error)
                logger.warning("checkpoint: database error (%s)", error)
            await self._pause(CHECKPOINT_EVERY_SECONDS)

    # Bulk replays and discards.

    async def _bulk_loop(self) -> None:
        """Advance each running bulk action by what its rate allows per tick, and tell its progress page."""
        while not self.stopping.is_set():
            try:
                for action_id in await in_db(bulk_actions_running):
                    action = await in_db(_bulk_tick, action_id)
                    await self._tell_progress(action)
                self._loop_ok("bulk")
            except DatabaseError as error:
                self._loop_failed("bulk", error)
                logger.warning("bulk: database error (%s)", error)
            await self._pause(BULK_TICK_SECONDS)

    async def _tell_progress(self, action: BulkAction) -> None:
        """One progress message to the action's page (best effort: the page also reads it on load)."""
        layer = self.fanout.layer
        if layer is None:
            return
        try:
            await layer.group_send(bulk_group(action.pk), {"type": "bulk.progress", **action.progress()})
        except Exception:  # the progress page is best effort; the action and its report are in the database
            logger.exception("bulk: progress of #%d not sent", action.pk)

    # The Pub/Sub listener for seed-style publishers.

    async def _listen_loop(self) -> None:
        """Copy what seed-style publishers PUBLISH into the ingest stream, once each, whichever worker hears it first.

        Every worker listens: Pub/Sub keeps nothing for a subscriber that is gone, so with one
        elected listener, the seconds until another took over were lost. Now a killed worker's
        share is heard by the others all along, and the heard marks keep the copies to one.
        """
        while not self.stopping.is_set():
            try:
                await self._listen()
            except (RedisError, OSError) as error:
                self._loop_failed("listener", error)
                logger.warning("listener: Redis unavailable (%s)", error)
                await self._pause(1.0)

    async def _listen(self) -> None:
        """Subscribe to every topic and copy what is heard, until stopped or the connection fails (raised)."""
        loop = asyncio.get_running_loop()
        pubsub = self.redis.pubsub()
        heard: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue()
        reader: asyncio.Task[None] | None = None
        subscribed: set[str] = set()
        next_refresh = 0.0
        try:
            while not self.stopping.is_set():
                if loop.time() >= next_refresh:
                    if not self.topics:
                        await self.refresh_topics()  # not waiting for the tap: every second unheard is lost
                    if wanted := set(self.topics) - subscribed:
                        await pubsub.subscribe(*wanted)
                        subscribed |= wanted
                        logger.info("listener: listening on %d topic(s)", len(subscribed))
                    next_refresh = loop.time() + TOPIC_REFRESH_SECONDS
                if not subscribed:
                    await self._pause(0.2)
                    next_refresh = 0.0  # a bus without topics yet: look again soon
                    continue
                reader = reader or asyncio.create_task(_pubsub_read(pubsub, heard))
                batch = await _drain(heard, reader)
                if batch:
                    batch = await in_db(_not_yet_recorded, batch)
                if batch:
                    await self._ingest(batch)
                self._loop_ok("listener")
        finally:
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            await pubsub.aclose()

    async def _ingest(self, batch: list[tuple[bytes, bytes]]) -> int:
        """Add heard messages to the ingest stream unless another worker did already; how many were added."""
        keys = [INGEST_STREAM] + [HEARD_MARK_PREFIX + _heard_digest(channel, data) for channel, data in batch]
        args: list[Any] = [HEARD_MARK_SECONDS, INGEST_MAXLEN]
        for channel, data in batch:
            args += [channel, data]
        return int(await self._ingest_once(keys=keys, args=args))


async def _pubsub_read(pubsub: aioredis.client.PubSub, heard: asyncio.Queue[tuple[bytes, bytes]]) -> None:
    """Queue every message heard, waiting as long as each takes to arrive.

    Never with a timeout: a read cut short in the middle of a large message (10 MB takes a
    while) leaves the connection out of step, and redis-py drops it with what followed.
    """
    while True:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
        if message is not None and message["type"] == "message":
            heard.put_nowait((message["channel"], message["data"]))


async def _drain(heard: asyncio.Queue[tuple[bytes, bytes]], reader: asyncio.Task[None]) -> list[tuple[bytes, bytes]]:
    """Collect heard messages: waiting at most 100 ms for the first, then LISTEN_GATHER_SECONDS for more (a batch).

    Every batch costs a query of history (are these the dashboard's own?): gathered for a
    moment, a busy bus makes a few large batches instead of one or two messages each. A
    reader that failed raises its error here, once what it heard is handled.
    """
    loop = asyncio.get_running_loop()
    batch: list[tuple[bytes, bytes]] = []
    wait, until = 0.1, loop.time() + 0.1
    while len(batch) < READ_COUNT and wait > 0:
        try:
            batch.append(await asyncio.wait_for(heard.get(), wait))
        except TimeoutError:
            break
        if len(batch) == 1:
            until = loop.time() + LISTEN_GATHER_SECONDS
        wait = until - loop.time()
    if not batch and reader.done():
        reader.result()  # raises what ended it (the connection failed)
        raise ConnectionError("the Pub/Sub reader stopped")
    return batch


def _heard_digest(channel: bytes, data: bytes) -> str:
    """What names a heard message among the heard marks: a digest of its channel and its bytes."""
    return hashlib.blake2b(channel + b"\n" + data, digest_size=16).hexdigest()


def _envelope_id(data: bytes) -> str | None:
    """The envelope id a Pub/Sub message carries, if it is an envelope with one (whatever arrived: never raises)."""
    if data.startswith(b'{"id":"') and data[43:44] == b'"':  # the dashboard's own: a UUID first
        return data[7:43].decode(errors="replace")
    if len(data) > RAW_KEEP_BYTES:
        return None  # the tap dead-letters it; no need to parse 10 MB here first
    try:
        envelope = json.loads(data)
    except (ValueError, RecursionError):  # not JSON, not UTF-8/16/32, or nested past what Python reads
        return None
    envelope_id = envelope.get("id") if isinstance(envelope, dict) else None
    return envelope_id if isinstance(envelope_id, str) else None


def _not_yet_recorded(batch: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The Pub/Sub messages whose envelopes history does not hold yet, in one query.

    The dashboard commits an event before it publishes it, so its own publishes are found
    here and not copied into the ingest stream, where the tap would read each a second time.
    """
    ids = [_envelope_id(data) for _, data in batch]
    recorded = events_recorded({envelope_id for envelope_id in ids if envelope_id})
    return [message for message, envelope_id in zip(batch, ids, strict=True) if envelope_id not in recorded]


def _tidy() -> int:
    """One round of tidying; how many grants and keys it removed."""
    return grants_expire() + idempotency_keys_purge()


def wal_checkpoint() -> tuple[int, int]:
    """Copy the SQLite WAL into the database file without waiting for anyone (PASSIVE).

    Returns the frames the WAL holds and how many of them are in the database file now.
    """
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
        _busy, held, copied = cursor.fetchone()
    return int(held), int(copied)


def _audit_check(resume: bool) -> ChainReport:
    """One check of the audit chain, recorded; the thread's database connection is closed after it."""
    try:
        return audit_verify(resume=resume, checked_by="system:bus-worker")
    finally:
        connections.close_all()


async def run_until_signalled(worker: BusWorker, on_ready: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run the worker, stopping it cleanly on SIGTERM or SIGINT."""
    import signal

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)
    if on_ready is not None:
        await on_ready()
    await worker.run()
