"""A service's follower of HMS bus topics: its own consumer group, each envelope applied once, a receipt for each.

Wire contract (docs: the project's DESIGN.md): every event is ``XADD stream:<topic> * event <envelope>``
besides its ``PUBLISH``; a subscriber reads the stream through a consumer group named after itself
(the dashboard shows that group's lag) and says what it did with each event by
``XADD hms:receipts * receipt {"event", "subscriber", "status", "detail"}``.

Only redis-py and the standard library: a service team copies this package or installs it, no Django.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import redis

logger = logging.getLogger("hms_subscriber")

# As busapp.publishing (STREAM_PREFIX, RECEIPTS_STREAM, RECEIPT_FIELD): repeated, since importing it needs Django.
STREAM_PREFIX = "stream:"
ENVELOPE_FIELD = "event"
RECEIPTS_STREAM = "hms:receipts"
RECEIPT_FIELD = "receipt"
DETAIL_MAX_BYTES = 4096  # the bus keeps at most 4 KiB of a receipt's detail
ENVELOPE_ID_MAX = 128  # the bus's history refuses longer envelope ids, so no real event has one

APPLIED, REJECTED, IGNORED = "applied", "rejected", "ignored"
_DONE = b"done"
# Bounds of the loops that page through Redis: a start-up drain, a claim round per stream.
DRAIN_ROUNDS = 100
CLAIM_PAGES = 10
API_TIMEOUT_SECONDS = 5.0

Envelope = dict[str, Any]
Handler = Callable[[Envelope], object]


@dataclass(frozen=True)
class Ignored:
    """Returned by a handler: the event does not concern this service (receipt ``ignored``, with the reason)."""

    reason: str = ""


@dataclass(frozen=True)
class _Outcome:
    """What a handler did with an event, as its receipt says it."""

    status: str
    detail: str


def detail_fit(text: str) -> str:
    """The text as the bus keeps a receipt's detail: no NUL, no lone surrogate, at most 4 KiB of UTF-8."""
    clean = text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    data = clean.encode()
    if len(data) <= DETAIL_MAX_BYTES:
        return clean
    marker = "…"
    # Cut on a character boundary: "ignore" drops a multi-byte character split at the end.
    return data[: DETAIL_MAX_BYTES - len(marker.encode())].decode("utf-8", "ignore") + marker


def envelope_parse(raw: bytes | None) -> tuple[Envelope | None, str | None, str]:
    """A stream entry's envelope, or what is wrong with it: ``(envelope, envelope id if any, problem)``."""
    if raw is None:
        return None, None, f"the entry has no {ENVELOPE_FIELD!r} field"
    try:
        decoded = json.loads(raw)
    except ValueError as error:
        return None, None, f"the envelope is not JSON ({error})"
    return envelope_check(decoded)


def envelope_check(decoded: object) -> tuple[Envelope | None, str | None, str]:
    """An envelope checked for what a handler relies on: an object with an id, a type and an object payload."""
    if not isinstance(decoded, dict):
        return None, None, f"the envelope is a JSON {type(decoded).__name__}, not an object"
    envelope_id = decoded.get("id")
    if not isinstance(envelope_id, str) or not envelope_id or len(envelope_id) > ENVELOPE_ID_MAX:
        return None, None, f"the envelope has no id (a string of 1 to {ENVELOPE_ID_MAX} characters)"
    if not isinstance(decoded.get("type"), str):
        return None, envelope_id, "malformed envelope: its type is missing or not a string"
    if not isinstance(decoded.get("payload"), dict):
        return None, envelope_id, "malformed envelope: its payload is missing or not an object"
    return decoded, envelope_id, ""


def _text(value: bytes | str) -> str:
    """Redis answers bytes; stream ids and names are ASCII."""
    return value.decode() if isinstance(value, bytes) else value


class Subscriber:
    """Follows topics through the consumer group named ``name``; hands each envelope to its type's handler once."""

    def __init__(
        self,
        name: str,
        *,
        topics: Sequence[str],
        redis_url: str = "redis://localhost:6379/0",
        consumer: str | None = None,
        api_url: str | None = None,
        api_token: str | None = None,
        receipts_over_api: bool = False,
        claim_idle_seconds: float = 60.0,
        block_seconds: float = 1.0,
        batch_size: int = 16,
        mark_ttl_seconds: int = 30 * 24 * 3600,
        seen_max: int = 10_000,
        max_backoff_seconds: float = 5.0,
    ) -> None:
        if not name or not topics:
            raise ValueError("a Subscriber needs its registered name and at least one topic, as on /subscribers/")
        if api_url is not None:
            if urllib.parse.urlsplit(api_url).scheme not in ("http", "https"):
                raise ValueError(f"api_url {api_url!r} must start with http:// or https://")
            if not api_token:
                raise ValueError("api_url needs api_token: a service token (hms_...) with the view right on the topics")
        if receipts_over_api and api_url is None:
            raise ValueError("receipts_over_api needs api_url and api_token; without them receipts go on hms:receipts")
        self.name = name
        self.topics = list(topics)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.api_url = api_url.rstrip("/") if api_url else None
        self.api_token = api_token
        self.receipts_over_api = receipts_over_api
        self.claim_idle_seconds = claim_idle_seconds
        self.block_seconds = block_seconds
        self.batch_size = batch_size
        self.mark_ttl_seconds = mark_ttl_seconds
        self.seen_max = seen_max
        self.max_backoff_seconds = max_backoff_seconds
        # The socket must outwait a blocking read, or every quiet second would look like an outage.
        self._redis = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=block_seconds + 5)
        self._handlers: dict[str, Handler] = {}
        self._stopping = threading.Event()
        self._started = False
        self._seen: OrderedDict[str, None] = OrderedDict()
        # Outcomes whose receipt Redis has not taken yet (it went away): written on reconnect, not re-applied.
        self._unwritten: dict[str, _Outcome] = {}
        self._types_since_start: set[str] = set()
        self._claimed_at = 0.0

    @property
    def streams(self) -> list[str]:
        """The streams this subscriber reads, one per topic."""
        return [f"{STREAM_PREFIX}{topic}" for topic in self.topics]

    def handler(self, event_type: str) -> Callable[[Handler], Handler]:
        """Register the decorated function for events of ``event_type``; it gets the whole envelope."""

        def register(function: Handler) -> Handler:
            self._handlers[event_type] = function
            return function

        return register

    def stop(self) -> None:
        """Ask ``run`` to return after the entries in hand (at most one batch) are applied and acknowledged."""
        self._stopping.set()

    def run(self) -> None:
        """Follow the topics until ``stop()``, SIGTERM or SIGINT; when Redis goes away, reconnect with backoff."""
        if not self._handlers:
            raise ValueError("no handler: register one with @subscriber.handler('<event type>') before run()")
        restore = self._signals_install()
        backoff = 0.0
        try:
            while not self._stopping.is_set():
                try:
                    if not self._started:
                        self._start()
                    self._round()
                    backoff = 0.0
                except redis.RedisError as error:
                    self._started = False  # rejoin: Redis may have come back empty, without our groups
                    backoff = min(max(backoff * 2, 0.1), self.max_backoff_seconds)
                    logger.warning("%s: Redis error (%s); retrying in %.1fs", self.name, error, backoff)
                    self._stopping.wait(backoff)
        finally:
            restore()
            self._redis.close()
            logger.info("%s stopped: consumer %s", self.name, self.consumer)

    def _signals_install(self) -> Callable[[], None]:
        """SIGTERM and SIGINT stop the loop cleanly (signal handlers can only be set from the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {number: signal.signal(number, self._on_signal) for number in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for number, handler in previous.items():
                signal.signal(number, handler)

        return restore

    def _on_signal(self, number: int, frame: FrameType | None) -> None:
        """Stop at the next entry boundary rather than die holding one."""
        logger.info("%s: %s received, stopping", self.name, signal.Signals(number).name)
        self.stop()

    # Start-up: join, finish what is ours, drain, catch up.

    def _start(self) -> None:
        """Join the groups, apply our own pending entries and the backlog, then the value in force of other types."""
        self._types_since_start = set()
        for stream in self.streams:
            self._group_join(stream)
        self._deliver_own_pending()
        for _ in range(DRAIN_ROUNDS):
            if self._stopping.is_set() or not self._deliver_all(self._read(">", block=False)):
                break
        # After the backlog, so the value in force is never overwritten by an older event read later.
        self._catch_up(skip=set(self._types_since_start))
        self._started = True
        logger.info("%s ready: consumer %s on %s", self.name, self.consumer, ", ".join(self.streams))

    def _deliver_own_pending(self) -> None:
        """Entries delivered to this consumer name before and never acknowledged (a restart that kept its name)."""
        # Paged by id, not from "0" each time: an entry another instance still holds stays pending here.
        positions = dict.fromkeys(self.streams, "0")
        for _ in range(DRAIN_ROUNDS):
            entries = self._read(positions)
            if self._stopping.is_set() or not entries:
                return
            self._deliver_all(entries)
            positions.update((stream, _text(entry_id)) for stream, entry_id, _ in entries)

    def _group_join(self, stream: str) -> None:
        """Create our group at the stream's end if it is new: the past comes from catch-up, not a replay."""
        # From "$", not "0": a replay of the retained stream would apply every old value in turn; the value
        # in force (catch-up) is what a new service needs. An existing group keeps its position.
        try:
            self._redis.xgroup_create(stream, self.name, id="$", mkstream=True)
            logger.info("%s: created consumer group on %s at its end", self.name, stream)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def _catch_up(self, *, skip: set[str]) -> None:
        """Apply the event in force of each handled type the backlog held none of, unless it was applied already."""
        if self.api_url is None:
            return
        found: list[Envelope] = []
        for topic in self.topics:
            for event_type in self._handlers:
                if event_type not in skip:
                    found.extend(self._latest(topic, event_type))
        for envelope in sorted(found, key=lambda item: float(item.get("timestamp") or 0)):
            checked, envelope_id, problem = envelope_check(envelope)
            if checked is None:
                logger.warning("%s: catch-up envelope %s is malformed: %s", self.name, envelope_id, problem)
                continue
            self._apply(checked, entry=None)

    def _latest(self, topic: str, event_type: str) -> list[Envelope]:
        """``GET /api/topics/<topic>/types/<type>/latest/``'s envelope; none if nothing is in force or the API fails."""
        path = f"/api/topics/{urllib.parse.quote(topic)}/types/{urllib.parse.quote(event_type)}/latest/"
        try:
            body = self._api("GET", path)
        except urllib.error.HTTPError as error:
            if error.code != 404:  # 404: nothing published yet, or not a type of this topic
                logger.warning("%s: catch-up %s answered %s; following the stream only", self.name, path, error.code)
            return []
        except (OSError, ValueError) as error:
            logger.warning("%s: catch-up %s failed (%s); following the stream only", self.name, path, error)
            return []
        envelope = body.get("event") if isinstance(body, dict) else None
        return [envelope] if isinstance(envelope, dict) else []

    def _api(self, method: str, path: str, body: object = None) -> Any:
        """One JSON request to the bus's API with the service token."""
        assert self.api_url is not None  # noqa: S101 (callers check; mypy needs it said)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 (the scheme was checked to be http or https)
            self.api_url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.api_token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=API_TIMEOUT_SECONDS) as response:  # noqa: S310 (as above)
            return json.loads(response.read() or b"null")

    # The loop: claim what dead instances left, read what is new.

    def _round(self) -> None:
        """One bounded round: claim idle entries when due, then wait at most ``block_seconds`` for new ones."""
        if time.monotonic() - self._claimed_at >= min(self.claim_idle_seconds / 2, 5.0):
            self._claim()
            self._claimed_at = time.monotonic()
        self._deliver_all(self._read(">", block=True))

    def _read(
        self, position: str | dict[str, str], *, block: bool = False
    ) -> list[tuple[str, bytes, dict[bytes, bytes]]]:
        """One XREADGROUP over every stream (from one position, or one per stream): ``(stream, entry id, fields)``."""
        # redis-py types the positions as a dict of every key and id type it takes (dicts are invariant).
        positions: dict[Any, Any] = dict(position) if isinstance(position, dict) else {}
        if isinstance(position, str):
            positions = dict.fromkeys(self.streams, position)
        reply: Any = self._redis.xreadgroup(
            self.name,
            self.consumer,
            positions,
            count=self.batch_size,
            block=int(self.block_seconds * 1000) if block else None,
        )
        entries: list[tuple[str, bytes, dict[bytes, bytes]]] = []
        # The client speaks RESP2 (redis-py's default, the client is ours): [[stream, [(id, fields), ...]], ...].
        for stream, rows in reply or []:
            entries.extend((_text(stream), entry_id, fields or {}) for entry_id, fields in rows)
        return entries

    def _claim(self) -> None:
        """XAUTOCLAIM entries another instance of this subscriber left unacknowledged longer than the idle time."""
        for stream in self.streams:
            start: bytes | str = "0-0"
            for _ in range(CLAIM_PAGES):
                try:
                    reply = self._redis.xautoclaim(
                        stream, self.name, self.consumer, int(self.claim_idle_seconds * 1000), start, self.batch_size
                    )
                except redis.ResponseError as error:
                    if "NOGROUP" in str(error):
                        self._started = False  # the group was deleted: join again
                        return
                    raise
                start, claimed = reply[0], reply[1]
                if claimed:
                    logger.info("%s: claimed %d idle entries of %s", self.name, len(claimed), stream)
                self._deliver_all((stream, entry_id, fields or {}) for entry_id, fields in claimed)
                if _text(start) == "0-0":
                    break

    def _deliver_all(self, entries: Iterable[tuple[str, bytes, dict[bytes, bytes]]]) -> int:
        """Deliver each entry on its own, so one bad entry stops nothing; how many there were."""
        count = 0
        for stream, entry_id, fields in entries:
            self._deliver(stream, _text(entry_id), fields)
            count += 1
        return count

    def _deliver(self, stream: str, entry_id: str, fields: dict[bytes, bytes]) -> None:
        """Apply a stream entry's envelope once; a malformed one is acknowledged, never retried."""
        envelope, envelope_id, problem = envelope_parse(fields.get(ENVELOPE_FIELD.encode()))
        if envelope is not None:
            self._apply(envelope, entry=(stream, entry_id))
            return
        if envelope_id is None:
            logger.warning("%s: dropped entry %s of %s: %s", self.name, entry_id, stream, problem)
            self._redis.xack(stream, self.name, entry_id)
            return
        logger.warning("%s: rejected entry %s of %s: %s", self.name, entry_id, stream, problem)
        if self._lease(envelope_id) == "taken":
            self._finish(envelope_id, _Outcome(REJECTED, problem), entry=(stream, entry_id))
        else:
            self._redis.xack(stream, self.name, entry_id)

    # Once per envelope id.

    def _apply(self, envelope: Envelope, *, entry: tuple[str, str] | None) -> None:
        """Hand the envelope to its handler unless it was applied already (here, or by any instance), then finish."""
        envelope_id: str = envelope["id"]
        self._types_since_start.add(envelope["type"])
        outcome = self._unwritten.get(envelope_id)
        if outcome is None:
            if envelope_id in self._seen:
                self._ack(entry)
                return
            lease = self._lease(envelope_id)
            if lease == "done":
                self._remember(envelope_id)
                self._ack(entry)
                return
            if lease == "held":
                return  # another live instance is applying it; if it dies, the entry is claimed again
            outcome = self._call(envelope)
            self._unwritten[envelope_id] = outcome
        self._finish(envelope_id, outcome, entry=entry)

    def _mark_key(self, envelope_id: str) -> str:
        """The Redis key that says this subscriber applied (or is applying) the envelope."""
        return f"hms:subscriber:{self.name}:applied:{envelope_id}"

    def _lease(self, envelope_id: str) -> str:
        """Take the envelope's mark for this consumer: ``taken``, ``done`` (applied before) or ``held`` (by another)."""
        key, mine = self._mark_key(envelope_id), f"applying {self.consumer}".encode()
        # Lives as long as a pending entry stays unclaimed: a dead holder's mark is gone when its entry is claimed.
        lease_ms = max(1, int(self.claim_idle_seconds * 1000))
        if self._redis.set(key, mine, nx=True, px=lease_ms):
            return "taken"
        value = self._redis.get(key)
        if value == _DONE:
            return "done"
        if value == mine:  # our own attempt, cut short by a Redis outage
            return "taken"
        if value is None and self._redis.set(key, mine, nx=True, px=lease_ms):
            return "taken"
        return "held"

    def _call(self, envelope: Envelope) -> _Outcome:
        """Run the handler: raising is ``rejected`` (its message), ``"ignored"``/``Ignored`` is ``ignored``."""
        handler = self._handlers.get(envelope["type"])
        if handler is None:
            return _Outcome(IGNORED, f"{self.name} has no handler for {envelope['type']}")
        try:
            result = handler(envelope)
        except Exception as error:  # any handler's failure is the event's receipt, never the loop's end
            logger.exception("%s: handler of %s failed on %s", self.name, envelope["type"], envelope["id"])
            return _Outcome(REJECTED, str(error) or type(error).__name__)
        if isinstance(result, Ignored):
            return _Outcome(IGNORED, result.reason)
        if result == IGNORED:
            return _Outcome(IGNORED, "")
        return _Outcome(APPLIED, result if isinstance(result, str) else "")

    def _finish(self, envelope_id: str, outcome: _Outcome, *, entry: tuple[str, str] | None) -> None:
        """Post the receipt, mark the envelope done and acknowledge its entry: on the stream, in one MULTI."""
        receipt = {"event": envelope_id, "subscriber": self.name, "status": outcome.status}
        receipt["detail"] = detail_fit(outcome.detail)
        posted = self.receipts_over_api and self._receipt_post(envelope_id, receipt)
        # One transaction: a receipt is on the stream exactly when the mark says done and the entry is acked.
        pipe = self._redis.pipeline(transaction=True)
        if not posted:
            pipe.xadd(RECEIPTS_STREAM, {RECEIPT_FIELD: json.dumps(receipt)})
        pipe.set(self._mark_key(envelope_id), _DONE, ex=self.mark_ttl_seconds)
        if entry is not None:
            pipe.xack(entry[0], self.name, entry[1])
        pipe.execute()
        self._unwritten.pop(envelope_id, None)
        self._remember(envelope_id)

    def _receipt_post(self, envelope_id: str, receipt: dict[str, str]) -> bool:
        """``POST /api/events/<id>/receipts/``; False (the stream is used instead) when the API did not take it."""
        path = f"/api/events/{urllib.parse.quote(envelope_id)}/receipts/"
        try:
            self._api("POST", path, receipt)
        except (OSError, ValueError) as error:
            logger.warning(
                "%s: receipt for %s over the API failed (%s); posting it on hms:receipts", self.name, envelope_id, error
            )
            return False
        return True

    def _ack(self, entry: tuple[str, str] | None) -> None:
        """Acknowledge an entry whose envelope was finished before (a duplicate)."""
        if entry is not None:
            self._redis.xack(entry[0], self.name, entry[1])

    def _remember(self, envelope_id: str) -> None:
        """Keep the id among the newest ``seen_max`` this process finished: duplicates skip Redis's mark."""
        self._seen[envelope_id] = None
        self._seen.move_to_end(envelope_id)
        while len(self._seen) > self.seen_max:
            self._seen.popitem(last=False)
