"""The one module that talks to the bus: envelopes, the idempotent send, the relay, the workers' stream reads."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import hiredis
import redis
import redis.asyncio as aioredis
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from uuid_utils.compat import uuid7

from busapp.audit import AuditRecord, audit_append
from busapp.errors import BusUnavailableError
from busapp.live import letters_announce
from busapp.models import AuditAction, DeadLetter, Event, EventStatus
from busapp.redis_connections import bus_address, bus_client_new, pool_connection_new
from busapp.store import store

logger = logging.getLogger(__name__)

STREAM_PREFIX = "stream:"
# Pub/Sub carries nothing for those not listening, so every worker's listener copies what it
# hears here (the first to hear a message, once); the workers read it through the consumer
# group like a topic stream.
INGEST_STREAM = "hms:tap:ingest"
# Subscribers' receipts, for rates the API is not for: ``XADD hms:receipts * receipt <json>`` with
# ``{"event": <envelope id>, "subscriber": <name>, "status": ..., "detail": ...}``; workers record them.
RECEIPTS_STREAM = "hms:receipts"
RECEIPT_FIELD = "receipt"
# The bus workers' consumer group on every topic stream, the ingest stream and the receipts stream.
TAP_GROUP = "hms-bus-admin"
RELAY_BATCH = 500
MAX_BACKOFF_SECONDS = 60

_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


class SendOutcomeUnknownError(redis.ConnectionError):
    """A send was written to Redis and its answer lost (a timeout, a dropped connection): it may have run."""


# How the last error of a send whose outcome is unknown begins (kept in the event's last_error).
OUTCOME_UNKNOWN = "outcome unknown"


def bus_redis() -> redis.Redis:
    """The process's Redis client for ``REDIS_URL``, with short timeouts so a dead Redis fails fast."""
    url = bus_address()
    client = _clients.get(url)
    if client is None:
        with _clients_lock:
            client = _clients.get(url)
            if client is None:
                client = bus_client_new(socket_connect_timeout=1, socket_timeout=5)
                _clients[url] = client
    return client


def redis_unreachable_message(error: Exception) -> str:
    """Say which Redis did not answer and what to do about it."""
    return f"Redis at {bus_address()} is not reachable ({error}): start Redis or set REDIS_URL"


def stream_key(channel: str) -> str:
    """The Redis stream that keeps a channel's messages for durable consumers and the tap."""
    return f"{STREAM_PREFIX}{channel}"


def envelope_head(
    *, event_type: str, topic: str, schema_version: int, source: str, publisher: str, timestamp: float
) -> str:
    """The envelope's JSON members that all events of one publish share: everything but ``id`` and ``payload``."""
    members = {
        "type": event_type,
        "timestamp": timestamp,
        "topic": topic,
        "schema_version": schema_version,
        "source": source,
        "publisher": publisher,
    }
    return json.dumps(members, separators=(",", ":"), ensure_ascii=False)[1:-1]


def envelope_uuid() -> uuid.UUID:
    """A new envelope id: a version-7 UUID (RFC 9562), its first 48 bits the time in milliseconds.

    Ids that rise with time land at the end of the history's unique index instead of all over
    it: with random (version-4) ids a batch of 1,000 dirtied a leaf page of that index per event
    once the history held about 100,000 events, and batches slowed by a third (bench/README.md).
    ``uuid-utils`` makes them (in Rust, holding Python's lock: the hand-written generator it
    replaces read ``os.urandom`` in 4 KiB blocks so as not to let go of the lock per id).
    """
    return uuid7()


def envelope_wire(*, head: str, payload_json: str, envelope_id: uuid.UUID | None = None) -> tuple[str, str]:
    """The envelope id (new unless given), and the seed's envelope ``{id, type, timestamp, payload}`` plus our keys.

    The payload arrives already encoded (its size was checked on that encoding), so it is
    encoded once however many times it is used. A given id is a UUID, so it needs no escaping.
    """
    text = str(envelope_id or envelope_uuid())
    return text, f'{{"id":"{text}",{head},"payload":{payload_json}}}'


# Sends are idempotent on Redis itself: a message is added to its stream and published only if its
# mark (its envelope id) is new, and the mark keeps the stream id it got. A send that Redis may
# already have run (a timeout, a stall, a reply lost with its connection) is then safe to send
# again, and the relay always resends what is still pending: the second send publishes nothing and
# answers the first one's stream id. Partly run (an error in the middle of a batch), it is safe too.
# The marks are fields of one hash per period of BUS_SENT_MARK_SECONDS (``hms:sent:<period>``, by
# Redis's own clock, so every sender agrees): a send looks in this period's hash and the last one,
# so a mark is kept at least that long. A batch reads its marks with one HMGET a hash and writes
# them with one HSET: a key with its own expiry per message cost Redis twice the commands
# (bench/README.md). KEYS: per message its stream. ARGV[1]: the period in seconds, ARGV[2]: the
# hashes' prefix; then per message its mark, channel, body and stream length. Answers per message
# its stream id and 1 if sent now, 0 if before.
_IDEMPOTENT_SEND = """
local period, n = tonumber(ARGV[1]), #KEYS
local bucket = math.floor(tonumber(redis.call('TIME')[1]) / period)
local current, previous = ARGV[2] .. bucket, ARGV[2] .. (bucket - 1)
local function each_slice(command, key, values)
  local answer = {}
  for first = 1, #values, 1000 do
    local part = redis.call(command, key, unpack(values, first, math.min(first + 999, #values)))
    if type(part) == 'table' then
      for _, value in ipairs(part) do answer[#answer + 1] = value end
    end
  end
  return answer
end
local marks = {}
for i = 1, n do marks[i] = ARGV[4 * i - 1] end
marks[n + 1] = '~expiry'  -- set with the hash's expiry: EXPIRE once a period, not once a send
local now, before = each_slice('HMGET', current, marks), each_slice('HMGET', previous, marks)
local answer, fresh, here = {}, {}, {}
for i = 1, n do
  local sent = now[i] or before[i] or here[marks[i]]
  if sent then
    answer[2 * i - 1], answer[2 * i] = sent, 0
  else
    local channel, body, maxlen = ARGV[4 * i], ARGV[4 * i + 1], ARGV[4 * i + 2]
    local id = redis.call('XADD', KEYS[i], 'MAXLEN', '~', maxlen, '*', 'event', body)
    redis.call('PUBLISH', channel, body)
    here[marks[i]] = id
    fresh[#fresh + 1], fresh[#fresh + 2] = marks[i], id
    answer[2 * i - 1], answer[2 * i] = id, 1
  end
end
if #fresh > 0 then
  local expiring = now[n + 1]
  if not expiring then fresh[#fresh + 1], fresh[#fresh + 2] = '~expiry', 1 end
  each_slice('HSET', current, fresh)
  if not expiring then redis.call('EXPIRE', current, 2 * period) end
end
return answer
"""
_IDEMPOTENT_SEND_SHA = hashlib.sha1(_IDEMPOTENT_SEND.encode()).hexdigest()  # noqa: S324 (Redis names scripts so)
SENT_MARKS_PREFIX = "hms:sent:"


class BusMessage(NamedTuple):
    """One message for the bus: its channel, its body, its stream's length, and the mark that makes it once-only."""

    channel: str
    body: str
    maxlen: int
    mark: str


def _send(messages: Sequence[BusMessage]) -> list[tuple[str, bool]]:
    """Add each message to its stream and PUBLISH it, once only, in one script call.

    Returns each message's stream id, and whether this call sent it (False: an earlier send had).

    The call is written straight to a connection of our own: redis-py's pipeline and pool spent
    more time in Python than Redis took for the round trip (``bench/README.md``).
    """
    keys = [stream_key(channel) for channel, _, _, _ in messages]
    args: list[Any] = [settings.BUS_SENT_MARK_SECONDS, SENT_MARKS_PREFIX]
    for channel, body, maxlen, mark in messages:
        args += [mark, channel, body, maxlen]
    try:
        answer = _script_call(keys, args)
    except SendOutcomeUnknownError as error:
        raise BusUnavailableError(f"{OUTCOME_UNKNOWN}: {redis_unreachable_message(error)}") from error
    except redis.ResponseError as error:
        raise BusUnavailableError(f"Redis refused the send: {error}") from error
    except redis.RedisError as error:
        raise BusUnavailableError(redis_unreachable_message(error)) from error
    if not isinstance(answer, list) or len(answer) != 2 * len(messages):
        raise BusUnavailableError(f"Redis answered the send with {answer!r}")
    again = len(messages) - sum(answer[1::2])
    if again:
        logger.info("%d message(s) were on the bus already (an earlier send ran): not sent twice", again)
    return [(stream_id.decode(), bool(sent)) for stream_id, sent in zip(answer[0::2], answer[1::2], strict=True)]


def _script_call(keys: Sequence[str], args: Sequence[Any]) -> Any:
    """Run the idempotent send script by its digest (loading it if Redis does not know it) and return its answer."""
    tail = (len(keys), *keys, *args)
    idle = _idle_sending_connections()
    conn = idle.pop() if idle else _new_sending_connection()
    try:
        was_connected = conn.is_connected
        try:
            return _script_call_on(conn, tail)
        except redis.ConnectionError as error:
            if not was_connected or isinstance(error.__cause__, redis.TimeoutError):
                raise  # a stalled Redis is not asked again at once: the relay resends
            # The connection went stale while it idled (Redis restarted, or dropped idle clients):
            # once more, reconnected. The send is idempotent, so a Redis that ran it and lost
            # the answer does not publish it twice.
            return _script_call_on(conn, tail)
    finally:
        idle.append(conn)


def _script_call_on(conn: redis.Connection, tail: tuple[Any, ...]) -> Any:
    """EVALSHA on a connection; EVAL when Redis has not seen the script (it was restarted, or is new)."""
    written = False
    try:
        # hiredis packs the command in C; redis-py's own packer took as long as the round trip.
        conn.send_packed_command([hiredis.pack_command(("EVALSHA", _IDEMPOTENT_SEND_SHA, *tail))])
        written = True
        try:
            return conn.read_response()
        except redis.exceptions.NoScriptError:
            written = False
            conn.send_packed_command([hiredis.pack_command(("EVAL", _IDEMPOTENT_SEND, *tail))])
            written = True
            return conn.read_response()
    except redis.ResponseError:
        raise  # a complete reply was read: the connection is in step
    except BaseException as error:
        conn.disconnect()  # a half-read reply must not reach the next send; the next one reconnects
        if written and isinstance(error, (redis.ConnectionError, redis.TimeoutError, OSError)):
            raise SendOutcomeUnknownError(f"the send went out, its answer did not come back: {error}") from error
        raise


# Connections for sends, idle between them, per REDIS_URL.
_idle_sending: dict[str, list[redis.Connection]] = {}


def _idle_sending_connections() -> list[redis.Connection]:
    """The idle connections for sends to ``REDIS_URL``.

    Taking a connection from redis-py's pool and giving it back cost a send 30 us (a lock, and
    a poll of the socket for stray replies), a fifth of the round trip (bench/README.md). A send
    always reads its last reply (or disconnects), so its connection needs no poll, and a list's
    ``pop`` and ``append`` are atomic, so it needs no lock either.
    """
    address = bus_address()
    idle = _idle_sending.get(address)
    if idle is None:
        idle = _idle_sending.setdefault(address, [])
    return idle


def _new_sending_connection() -> redis.Connection:
    """A new connection (not yet connected) made like the bus client's pool makes them."""
    pool = bus_redis().connection_pool
    return pool_connection_new(pool)


def _retry_later(events: Sequence[Event], error: Exception) -> None:
    """Record a failed attempt on each event and when the relay should try again."""
    now = timezone.now()
    for event in events:
        event.attempts += 1
        event.next_attempt_at = now + dt.timedelta(seconds=min(MAX_BACKOFF_SECONDS, 2 ** (event.attempts - 1)))
        event.last_error = str(error)
    Event.objects.bulk_update(events, ["attempts", "next_attempt_at", "last_error"])


def events_send(events: Sequence[Event]) -> bool:
    """Put committed events on the bus in one round trip and mark them published; False if Redis is down."""
    return _events_send(events) is not None


def _events_send(events: Sequence[Event]) -> list[bool] | None:
    """``events_send``, saying for each event whether this call put it on the bus (False: an earlier send had)."""
    if not events:
        return []
    topics: dict[int, Any] = {}  # a related-object lookup cost more per event than building its message
    for event in events:
        if event.topic_id not in topics:
            topics[event.topic_id] = event.topic
    messages = [
        BusMessage(topic.channel, event.envelope, topic.stream_retention, event.envelope_id)
        for event in events
        for topic in (topics[event.topic_id],)
    ]
    try:
        sent = _send(messages)
    except BusUnavailableError as error:
        logger.warning("%d event(s) queued: %s", len(events), error)
        _retry_later(events, error)
        return None
    now = timezone.now()
    for event, (stream_id, _) in zip(events, sent, strict=True):
        event.status, event.stream_id, event.published_at, event.last_error = EventStatus.PUBLISHED, stream_id, now, ""
    store().events_mark_published(events, now)
    return [sent_now for _, sent_now in sent]


def send_on_commit(*, events: Sequence[Event] = (), dead_letters: Sequence[DeadLetter] = ()) -> None:
    """Put what this transaction wrote on the bus once it commits (at once outside one); the relay sends what fails."""
    if events or dead_letters:
        transaction.on_commit(lambda: _send_committed(events, dead_letters), robust=True)


def _send_committed(events: Sequence[Event], dead_letters: Sequence[DeadLetter]) -> None:
    """Send committed events, then committed dead letters."""
    events_send(events)
    dead_letters_send(dead_letters)


def dead_letters_send(dead_letters: Sequence[DeadLetter]) -> bool:
    """Put committed dead letters on ``<topic>.dlq`` (channel and stream) and the live pages; False if Redis is down."""
    if not dead_letters:
        return True
    messages = [
        BusMessage(letter.topic.dlq_channel, letter.dlq_message, letter.topic.stream_retention, f"dlq:{letter.pk}")
        for letter in dead_letters
    ]
    try:
        stream_ids = _send(messages)
    except BusUnavailableError as error:
        logger.warning("%d dead letter(s) not yet sent to their .dlq: %s", len(dead_letters), error)
        return False
    for letter, (stream_id, _) in zip(dead_letters, stream_ids, strict=True):
        letter.dlq_stream_id = stream_id
    DeadLetter.objects.bulk_update(dead_letters, ["dlq_stream_id"], batch_size=500)
    letters_announce(dead_letters)
    return True


def subscribers_count(channel: str) -> int | None:
    """How many clients listen on a Pub/Sub channel right now (``PUBSUB NUMSUB``); None when Redis is down."""
    try:
        return subscribers_counts([channel])[channel]
    except redis.RedisError:
        return None


def subscribers_counts(channels: Sequence[str]) -> dict[str, int]:
    """Clients listening on each Pub/Sub channel now, in one ``PUBSUB NUMSUB`` (raises when Redis is down)."""
    if not channels:
        return {}
    return {_text(channel): int(count) for channel, count in bus_redis().pubsub_numsub(*channels)}


# Receipts the workers refused off the stream, counted by reason (the API answers its own refusals).
RECEIPTS_REFUSED_KEY = "hms:receipts:refused"
# Receipts recorded, by status, however they came: /metrics' counter (reset with an empty Redis, as counters may).
RECEIPTS_RECORDED_KEY = "hms:receipts:recorded"


def receipts_recorded_count(counts: dict[str, int]) -> None:
    """Add recorded receipts to their statuses' counts (best effort: the receipts table has them all)."""
    try:
        with bus_redis().pipeline(transaction=False) as pipe:
            for status, count in counts.items():
                pipe.hincrby(RECEIPTS_RECORDED_KEY, status, count)
            pipe.execute()
    except redis.RedisError as error:
        logger.warning("receipts recorded but not counted for /metrics: %s", error)


async def receipts_refused_count(client: aioredis.Redis, counts: dict[str, int]) -> None:
    """Add refused stream receipts to their reasons' counts, for /metrics."""
    async with client.pipeline(transaction=False) as pipe:
        for reason, count in counts.items():
            pipe.hincrby(RECEIPTS_REFUSED_KEY, reason, count)
        await pipe.execute()


async def receipts_trim(client: aioredis.Redis) -> int:
    """Drop the receipts stream's entries every consumer group is done with; how many went.

    Done: before each group's oldest entry read and not acknowledged, and not after its last
    delivered one. Nothing else trims it (a subscriber ``XADD``s without ``MAXLEN``, so that a
    slow worker never loses a receipt), and recorded receipts are in the database.
    """
    try:
        groups = await client.xinfo_groups(RECEIPTS_STREAM)
    except redis.ResponseError:  # no stream yet
        return 0
    floors = []
    for group in groups:
        name, last = _text(group["name"]), _text(group["last-delivered-id"])
        pending = await client.xpending(RECEIPTS_STREAM, name)
        floors.append(_text(pending["min"]) if pending["pending"] else last)
    if not floors:
        return 0
    floor = min(floors, key=stream_id_key)
    return int(await client.xtrim(RECEIPTS_STREAM, minid=floor, approximate=False))


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """A stream id as comparable numbers."""
    millis, _, sequence = stream_id.partition("-")
    return int(millis), int(sequence or 0)


def receipts_counts(key: str) -> dict[str, int]:
    """Recorded (``RECEIPTS_RECORDED_KEY``) or refused receipts so far, by status or reason; empty if Redis is down."""
    try:
        raw = bus_redis().hgetall(key)
    except redis.RedisError:
        return {}
    return {_text(name): int(count) for name, count in raw.items()}


@dataclass(frozen=True)
class GroupReading:
    """One consumer group on a stream, as ``XINFO GROUPS`` and ``CONSUMERS`` say, and its oldest undelivered entry."""

    name: str
    lag: int | None  # entries not yet delivered to the group; None where Redis cannot tell (entries deleted)
    pending: int  # delivered, not acknowledged
    last_delivered_id: str
    oldest_undelivered_id: str | None
    # The envelope id of the entry at ``last_delivered_id``; None when none was delivered, or it was trimmed away.
    last_delivered_envelope_id: str | None
    consumers: list[tuple[str, int, int]]  # name, pending, idle milliseconds


def stream_groups(channel: str) -> list[GroupReading] | None:
    """Every consumer group on a channel's stream; None when the stream does not exist (deleted, Redis emptied)."""
    client, key = bus_redis(), stream_key(channel)
    try:
        groups = client.xinfo_groups(key)
    except redis.ResponseError:  # "no such key"
        return None
    readings = []
    for group in groups:
        name, last = _text(group["name"]), _text(group["last-delivered-id"])
        consumers = [
            (_text(consumer["name"]), int(consumer["pending"]), int(consumer["idle"]))
            for consumer in client.xinfo_consumers(key, name)
        ]
        # From the last delivered entry on: it (when still there), then the oldest undelivered one.
        entries = [(_text(entry_id), fields) for entry_id, fields in client.xrange(key, min=last, count=2) or []]
        delivered = entries.pop(0) if entries and entries[0][0] == last else None
        lag = group.get("lag")
        readings.append(
            GroupReading(
                name=name,
                lag=None if lag is None else int(lag),
                pending=int(group["pending"]),
                last_delivered_id=last,
                oldest_undelivered_id=entries[0][0] if entries else None,
                last_delivered_envelope_id=_entry_envelope_id(delivered[1]) if delivered else None,
                consumers=consumers,
            )
        )
    return readings


def _entry_envelope_id(fields: dict[Any, Any] | None) -> str | None:
    """The envelope id a stream entry carries; None when it carries no JSON envelope with a text id."""
    raw = (fields or {}).get(b"event", (fields or {}).get("event"))
    try:
        envelope = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    found = envelope.get("id") if isinstance(envelope, dict) else None
    return found if isinstance(found, str) else None


def _text(value: Any) -> str:
    """A reply's bytes as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def bus_reachable() -> bool:
    """True when Redis answers a PING."""
    try:
        return bool(bus_redis().ping())
    except redis.RedisError:
        return False


def _grace() -> dt.timedelta:
    """How long the after-commit send has before the relay may send the same thing."""
    return dt.timedelta(seconds=settings.BUS_RELAY_GRACE_SECONDS)


def _relay_record(event: Event, maybe_sent_twice: bool) -> AuditRecord:
    """The audit entry of one relayed event: its stream id, how long it waited, how many tries it took."""
    delay = (event.published_at - event.created_at).total_seconds()  # type: ignore[operator]
    details: dict[str, Any] = {
        "stream_id": event.stream_id,
        "delay_seconds": round(delay, 3),
        "attempts": event.attempts,
    }
    if maybe_sent_twice:
        details["maybe_sent_twice"] = True
    return AuditRecord(AuditAction.EVENT_RELAY, f"event:{event.envelope_id}", details)


def relay_pending(*, limit: int = RELAY_BATCH) -> int:
    """Send the oldest events and dead letters still waiting for Redis; return how many went out.

    It locks only the event rows it sends (``of=("self",)``: never their topics, which every
    publish holds a key-share lock on), skipping those another worker is sending, and writes an
    ``event.relay`` audit entry for each in the same transaction. Should that transaction fail
    after the send, the events stay pending and the next round sends them again: the idempotent
    send publishes nothing twice.
    """
    if not bus_reachable():  # do not hold the database's write lock while Redis times out
        return 0
    sent = 0
    with transaction.atomic():
        events = list(
            Event.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("topic")
            .filter(status=EventStatus.PENDING, next_attempt_at__lte=timezone.now())
            .order_by("id")[:limit]
        )
        unsure = [event.last_error.startswith(OUTCOME_UNKNOWN) for event in events]
        sent_now = _events_send(events) if events else None
        if sent_now is not None:
            sent += len(events)
            # Sent now, after an earlier send whose answer was lost: that one never ran, or Redis ran it
            # and then lost its data (a restart without persistence, a failover before replication).
            # Subscribers may have heard it twice; it is marked, counted in /metrics, never hidden.
            twice = {event.pk for event, was, now in zip(events, unsure, sent_now, strict=True) if was and now}
            if twice:
                Event.objects.filter(pk__in=twice).update(maybe_sent_twice=True)
                logger.warning("%d event(s) resent after Redis lost their first send's outcome", len(twice))
            audit_append(
                actor="system:bus-worker", records=[_relay_record(event, event.pk in twice) for event in events]
            )
    with transaction.atomic():
        letters = list(
            DeadLetter.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("topic")
            .filter(dlq_stream_id="", received_at__lte=timezone.now() - _grace())
            .order_by("id")[:limit]
        )
        if letters and dead_letters_send(letters):
            sent += len(letters)
    return sent


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
            elif stream == RECEIPTS_STREAM:
                channel, body = "", fields.get(RECEIPT_FIELD.encode(), b"")
            else:
                channel = stream.removeprefix(STREAM_PREFIX)
                body = fields.get(b"event", b"")
            entries.append(StreamEntry(stream, entry_id, channel, body))
    return entries


# The workers' side of the streams: their consumer group, reads, claims and acknowledgements.


async def tap_groups_ensure(client: aioredis.Redis, streams: Iterable[str]) -> None:
    """Make sure each stream exists and has the workers' consumer group (it may have it already)."""
    for stream in streams:
        try:
            await client.xgroup_create(stream, TAP_GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise


async def tap_entries_read(
    client: aioredis.Redis, consumer: str, streams: Sequence[str], *, count: int, block_ms: int
) -> list[StreamEntry]:
    """New entries of these streams for this consumer (pending under its name until acknowledged)."""
    reply = await client.xreadgroup(TAP_GROUP, consumer, dict.fromkeys(streams, ">"), count=count, block=block_ms)
    return entries_from_reply(reply)


async def tap_entries_claim(
    client: aioredis.Redis, consumer: str, streams: Sequence[str], *, idle_ms: int, most: int
) -> list[StreamEntry]:
    """Up to ``most`` entries other consumers read and left unacknowledged over ``idle_ms``, now this one's.

    Entries trimmed from their stream meanwhile come back empty: they are acknowledged, there is
    nothing to record. Each entry says how many times Redis has handed it out.
    """
    claimed: list[StreamEntry] = []
    for stream in streams:
        start = "0-0"
        while len(claimed) < most:
            reply = await client.xautoclaim(stream, TAP_GROUP, consumer, idle_ms, start_id=start, count=most)
            start, messages = reply[0], reply[1]
            gone = [entry_id for entry_id, fields in messages if not fields]
            if len(reply) > 2:
                gone.extend(reply[2])
            if gone:
                await client.xack(stream, TAP_GROUP, *gone)
            entries = entries_from_reply([(stream, [m for m in messages if m[1]])])
            claimed.extend(await _with_deliveries(client, consumer, stream, entries))
            if start in (b"0-0", "0-0"):
                break
        if len(claimed) >= most:
            break
    return claimed


async def _with_deliveries(
    client: aioredis.Redis, consumer: str, stream: str, entries: list[StreamEntry]
) -> list[StreamEntry]:
    """The claimed entries with how many times Redis has delivered each (``XPENDING``, one call)."""
    if not entries:
        return entries
    pending = await client.xpending_range(
        stream, TAP_GROUP, min=entries[0].entry_id, max=entries[-1].entry_id, count=len(entries), consumername=consumer
    )
    times = {
        (row["message_id"].decode() if isinstance(row["message_id"], bytes) else row["message_id"]): int(
            row["times_delivered"]
        )
        for row in pending
    }
    return [dataclasses.replace(entry, deliveries=times.get(entry.entry_id, 1)) for entry in entries]


async def tap_entries_ack(client: aioredis.Redis, entries: Sequence[StreamEntry]) -> None:
    """Acknowledge entries (their history rows are committed), one XACK per stream in one round trip."""
    by_stream: dict[str, list[str]] = defaultdict(list)
    for entry in entries:
        by_stream[entry.stream].append(entry.entry_id)
    async with client.pipeline(transaction=False) as pipe:
        for stream, ids in by_stream.items():
            pipe.xack(stream, TAP_GROUP, *ids)
        await pipe.execute()


# What the workers' Pub/Sub listeners hear, copied into the ingest stream once whichever hears it first.

# The first worker to copy a message leaves a mark (``hms:heard:<digest>``) that tells the others it is there.
HEARD_MARK_PREFIX = "hms:heard:"
HEARD_MARK_SECONDS = 300
INGEST_MAXLEN = 100_000
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


def heard_ingest_script(client: aioredis.Redis) -> Any:
    """The ingest script, registered on this client (loaded into Redis on first use)."""
    return client.register_script(_INGEST_ONCE)


async def heard_ingest(script: Any, batch: Sequence[tuple[bytes, bytes]]) -> int:
    """Add heard (channel, data) messages to the ingest stream unless a worker did already; how many it added."""
    keys = [INGEST_STREAM] + [HEARD_MARK_PREFIX + _heard_digest(channel, data) for channel, data in batch]
    args: list[Any] = [HEARD_MARK_SECONDS, INGEST_MAXLEN]
    for channel, data in batch:
        args += [channel, data]
    return int(await script(keys=keys, args=args))


def _heard_digest(channel: bytes, data: bytes) -> str:
    """What names a heard message among the heard marks: a digest of its channel and its bytes."""
    return hashlib.blake2b(channel + b"\n" + data, digest_size=16).hexdigest()
