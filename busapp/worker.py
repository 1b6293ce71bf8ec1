"""The bus worker: relay (pending events to Redis), tap (Redis to history and DLQ), fan-out (to browsers), scheduler.

One asyncio loop; every database step runs in Django's one sync thread through
``sync_to_async``. The tap reads topic streams and the ingest stream (what the elected
Pub/Sub listener heard from seed-style publishers) through a consumer group, records
each envelope id once, and acknowledges an entry only after its history row committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
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
    IntegrityError,
    connection,
    connections,
    transaction,
)
from django.utils import timezone
from redis.exceptions import RedisError, ResponseError

from busapp.audit import AuditRecord, ChainReport, audit_append, audit_verify
from busapp.grants import grants_expire
from busapp.live import bulk_group, dlq_group, live_item, live_item_read, live_message, topic_group
from busapp.models import BulkAction, DeadLetter, Event, EventStatus, SchemaVersion, Source, Topic
from busapp.publishing import INGEST_STREAM, STREAM_PREFIX, dead_letters_send, relay_pending, stream_key
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
from busapp.validation import FieldError, envelope_errors, payload_errors

logger = logging.getLogger(__name__)

GROUP = "hms-bus-admin"
LEADER_KEY = "hms:tap:leader"
LEADER_TTL_MS = 10_000
READ_COUNT = 500
# Seconds: at most one group_send per topic this often. A batch spans at most 25 ms, within
# the "batch of at most 100 ms" rule: at most 40 group messages a second per topic
# (channels-redis delivers about 950 a second). Against 50 ms it took the p99 of 50 live
# pages at 1,000 events/s from 130-171 ms to 74-86 ms, for about 15% more of a core in the web
# server (bench/README.md, live.py).
FANOUT_INTERVAL = 0.025
TOPIC_REFRESH_SECONDS = 5.0
CLAIM_EVERY_SECONDS = 30.0
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
# Envelope ids in one IN (...) list: within every database's limit of bound values.
_IDS_PER_QUERY = 500

T = TypeVar("T")

# Extend the leader lock only if we still hold it.
_RENEW_LEADER = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE_LEADER = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class StreamEntry:
    """One entry read from a Redis stream: which stream, its id, the channel it belongs to, its body."""

    stream: str
    entry_id: str
    channel: str
    body: bytes

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
    """Parse an entry's body as the seed's envelope; return it or the errors."""
    if len(entry.body) > RAW_KEEP_BYTES:
        return None, [{"path": "", "message": f"is {len(entry.body):,} bytes; far over the payload limit"}]
    try:
        envelope = json.loads(entry.body)
    except ValueError as error:
        return None, [{"path": "", "message": f"is not valid JSON: {error}"}]
    errors = envelope_errors(envelope)
    return (envelope, []) if not errors else (None, errors)


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
    """Record a batch of bus entries in history once each; dead-letter what fails validation."""
    attempts = 3
    for attempt in range(1, attempts + 1):
        try:
            return _tap_record_once(entries)
        except IntegrityError:
            # Another worker recorded one of these ids at the same moment: look again.
            if attempt == attempts:
                raise
    return TapOutcome()  # not reached: the last attempt returns or raises


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
            errors = version if isinstance(version, list) else payload_errors(version, envelope["payload"])
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
        raw=entry.body[:RAW_KEEP_BYTES].decode(errors="replace"),
        errors=errors,
        source=Source.EXTERNAL,
        actor=EXTERNAL_ACTOR,
        origin=entry.origin,
    )


def _record_audit_record(event: Event) -> AuditRecord:
    """The audit entry that says the tap recorded an event published outside the dashboard."""
    return AuditRecord(
        "event.record",
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
        self.redis = aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1)
        self.stopping = asyncio.Event()
        self.fanout = FanOut()
        self.streams: list[str] = []
        self.topics: list[str] = []
        # Events read off the bus while their rows said pending: event id -> (stream id, loop time seen).
        self.seen_pending: dict[int, tuple[str, float]] = {}

    def stop(self) -> None:
        """Ask every loop to finish what it holds and return."""
        self.stopping.set()

    async def _pause(self, seconds: float) -> None:
        """Sleep, waking early when asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def run(self) -> None:
        """Run relay, tap and Pub/Sub listener until ``stop()``; nothing is left half-done."""
        loops = (
            self._tap_loop(),
            self._relay_loop(),
            self._listen_loop(),
            self._schedule_loop(),
            self._bulk_loop(),
            self._audit_check_loop(),
            self._checkpoint_loop(),
            self._tidy_loop(),
        )
        tasks = [asyncio.create_task(loop) for loop in loops]
        try:
            for finished in asyncio.as_completed(tasks):
                await finished  # a loop that fails stops them all, and the error ends the process
        finally:
            self.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.fanout.flush()
            with contextlib.suppress(DatabaseError):
                await self.settle_seen_pending(older_than=0.0)
            await self.redis.aclose()
            await sync_to_async(connections.close_all, thread_sensitive=True)()

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
                claimed.extend(entries_from_reply([(stream, [m for m in messages if m[1]])]))
                if start in (b"0-0", "0-0"):
                    break
            if len(claimed) >= READ_COUNT:
                break
        if claimed:
            logger.info("claimed %d entries left unacknowledged by a stopped worker", len(claimed))
        return claimed

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
            except (RedisError, OSError) as error:
                logger.warning("tap: Redis unavailable (%s); retrying in %.1fs", error, backoff)
                self.streams = []  # groups may be gone with a restarted Redis
                await self._pause(backoff)
                backoff = min(backoff * 2, 10.0)
            except DatabaseError as error:
                logger.warning("tap: database error (%s); retrying in %.1fs", error, backoff)
                await self._pause(backoff)
                backoff = min(backoff * 2, 10.0)

    # The relay and the scheduler: database steps repeated while they find work.

    async def _relay_loop(self) -> None:
        """Send what is still pending, oldest first, backing off while Redis is down."""
        await self._repeat("relay", relay_pending, RELAY_EVERY_SECONDS, "sent %d pending event(s) and dead letter(s)")

    async def _schedule_loop(self) -> None:
        """Publish what was scheduled (and approved, where that is needed) once its time has come."""
        await self._repeat("scheduler", publish_requests_due, SCHEDULE_EVERY_SECONDS, "published %d scheduled event(s)")

    async def _tidy_loop(self) -> None:
        """Record and remove grants that ran out; forget idempotency keys older than their day."""
        await self._repeat("tidy", _tidy, TIDY_EVERY_SECONDS, "removed %d expired grant(s) or old idempotency key(s)")

    async def _repeat(self, name: str, step: Callable[[], int], pause: float, did: str) -> None:
        """Run a database step until stopped: again at once while it handles something, else after a pause."""
        while not self.stopping.is_set():
            try:
                handled = await in_db(step)
            except DatabaseError as error:
                logger.warning("%s: database error (%s)", name, error)
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
            try:
                report = await sync_to_async(_audit_check, thread_sensitive=False)(not full)
            except Exception:  # a failed check is logged; it must not stop the relay and the tap
                logger.exception("audit check failed")
            else:
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
            except DatabaseError as error:
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
            except DatabaseError as error:
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
        """While elected, copy what seed-style publishers PUBLISH into the ingest stream."""
        while not self.stopping.is_set():
            try:
                if await self._elect():
                    await self._listen_as_leader()
                else:
                    await self._pause(LEADER_TTL_MS / 3000)
            except (RedisError, OSError) as error:
                logger.warning("listener: Redis unavailable (%s)", error)
                await self._pause(1.0)
        with contextlib.suppress(RedisError, OSError):
            await self.redis.eval(_RELEASE_LEADER, 1, LEADER_KEY, self.name)

    async def _elect(self) -> bool:
        """Take or keep the listener lock; True while this worker holds it."""
        if await self.redis.set(LEADER_KEY, self.name, nx=True, px=LEADER_TTL_MS):
            logger.info("listener: %s elected to tap Pub/Sub", self.name)
            return True
        return bool(await self.redis.eval(_RENEW_LEADER, 1, LEADER_KEY, self.name, LEADER_TTL_MS))

    async def _listen_as_leader(self) -> None:
        """Subscribe to every topic channel and copy messages into the ingest stream until leadership lapses."""
        loop = asyncio.get_running_loop()
        pubsub = self.redis.pubsub()
        subscribed: set[str] = set()
        renew_at = 0.0
        try:
            while not self.stopping.is_set():
                if loop.time() >= renew_at:
                    if not await self._elect():
                        return
                    wanted = set(self.topics)
                    if wanted - subscribed:
                        await pubsub.subscribe(*(wanted - subscribed))
                        subscribed |= wanted
                    renew_at = loop.time() + LEADER_TTL_MS / 3000
                if not subscribed:
                    await self._pause(0.2)
                    continue
                batch = await self._drain(pubsub)
                if batch:
                    batch = await in_db(_not_yet_recorded, batch)
                if batch:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for channel, data in batch:
                            pipe.xadd(
                                INGEST_STREAM,
                                {"channel": channel, "data": data},
                                maxlen=INGEST_MAXLEN,
                                approximate=True,
                            )
                        await pipe.execute()
        finally:
            await pubsub.aclose()

    async def _drain(self, pubsub: aioredis.client.PubSub) -> list[tuple[bytes, bytes]]:
        """Collect messages: waiting at most 100 ms for the first, then LISTEN_GATHER_SECONDS for more (up to a batch).

        Every batch costs a query of history (are these the dashboard's own?): gathered for a
        moment, a busy bus makes a few large batches instead of one or two messages each.
        """
        loop = asyncio.get_running_loop()
        batch: list[tuple[bytes, bytes]] = []
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        until = loop.time() + LISTEN_GATHER_SECONDS
        while message is not None:
            if message["type"] == "message":
                batch.append((message["channel"], message["data"]))
            wait = until - loop.time()
            if len(batch) >= READ_COUNT or wait <= 0:
                break
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
        return batch


def _envelope_id(data: bytes) -> str | None:
    """The envelope id a Pub/Sub message carries, if it is an envelope with one."""
    if data.startswith(b'{"id":"') and data[43:44] == b'"':  # the dashboard's own: a UUID first
        return data[7:43].decode()
    try:
        envelope = json.loads(data)
    except ValueError:
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
