"""The tap: reads every topic stream and the ingest stream through the workers' consumer group into history.

An entry is acknowledged only once its history row committed; what a stopped worker read
and never acknowledged is claimed by the others once idle ``BUS_CLAIM_IDLE_MS``.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from django.db import DatabaseError
from redis.exceptions import RedisError

from busapp.actions.tap import TapOutcome, events_seen_published, tap_record
from busapp.models import Topic
from busapp.publishing import (
    INGEST_STREAM,
    StreamEntry,
    dead_letters_send,
    stream_key,
    tap_entries_ack,
    tap_entries_claim,
    tap_entries_read,
    tap_groups_ensure,
)
from busapp.worker.fanout import FanOut
from busapp.worker.steps import LoopStates, in_db, pause

logger = logging.getLogger(__name__)

READ_COUNT = 500
TOPIC_REFRESH_SECONDS = 5.0
# A stopped worker's entries are claimed once idle BUS_CLAIM_IDLE_MS, at the next look: an XAUTOCLAIM
# per stream, cheap with nothing to take, so looked for often (at 30 s, they waited up to 30 s more).
CLAIM_EVERY_SECONDS = 5.0
# Events read off the bus while their rows said pending are checked again after this, well within
# BUS_RELAY_GRACE_SECONDS (5 s): by then their sender has marked them, unless it died.
SEEN_PENDING_SETTLE_SECONDS = 1.0


def _topic_names() -> list[str]:
    """Every topic's name."""
    return list(Topic.objects.values_list("name", flat=True))


class Tap:
    """One worker's tap: its consumer name in the group, the topics it reads, and what it read while still pending."""

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        name: str,
        claim_idle_ms: int,
        fanout: FanOut,
        stopping: asyncio.Event,
        loops: LoopStates,
    ) -> None:
        self.redis, self.name, self.claim_idle_ms = redis, name, claim_idle_ms
        self.fanout, self.stopping, self.loops = fanout, stopping, loops
        self.topics: list[str] = []
        self.streams: list[str] = []
        # Events read off the bus while their rows said pending: event id -> (stream id, loop time seen).
        self.seen_pending: dict[int, tuple[str, float]] = {}

    async def refresh_topics(self) -> None:
        """Load the topic list and make sure each topic stream and the ingest stream have our group."""
        self.topics = await in_db(_topic_names)
        streams = [stream_key(name) for name in self.topics] + [INGEST_STREAM]
        await tap_groups_ensure(self.redis, set(streams) - set(self.streams))
        self.streams = streams

    async def read(self, *, block_ms: int = 100) -> list[StreamEntry]:
        """Read new entries for this consumer (they stay pending until acknowledged)."""
        if not self.streams:
            await self.refresh_topics()
        return await tap_entries_read(self.redis, self.name, self.streams, count=READ_COUNT, block_ms=block_ms)

    async def claim(self) -> list[StreamEntry]:
        """Take over up to a batch of entries another (dead) consumer read but never acknowledged."""
        if not self.streams:
            await self.refresh_topics()
        claimed = await tap_entries_claim(
            self.redis, self.name, self.streams, idle_ms=self.claim_idle_ms, most=READ_COUNT
        )
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
        await tap_entries_ack(self.redis, entries)

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

    async def run(self) -> None:
        """Read, record, acknowledge, fan out; refresh topics and claim orphans now and then."""
        loop = asyncio.get_running_loop()
        next_refresh = next_claim = 0.0
        backoff = 0.5
        # The next batch, read while this one is recorded: the database thread and the loop work
        # at once. Its entries are this worker's (pending in the group) once read, so a read
        # that finished is always handled, after an error too, and before the worker stops.
        ahead: asyncio.Task[list[StreamEntry]] | None = None
        while not self.stopping.is_set():
            try:
                if loop.time() >= next_refresh:
                    await self.refresh_topics()
                    next_refresh = loop.time() + TOPIC_REFRESH_SECONDS
                if loop.time() >= next_claim:
                    while (claimed := await self.claim()) and not self.stopping.is_set():
                        await self.handle(claimed)
                    next_claim = loop.time() + CLAIM_EVERY_SECONDS
                reading, ahead = ahead, None
                entries = await (reading if reading is not None else self.read())
                if entries:
                    ahead = asyncio.ensure_future(self.read())
                    await self.handle(entries)
                if await self.settle_seen_pending():
                    logger.info("tap: marked published events whose sender had not (it stopped after sending)")
                backoff = 0.5
                self.loops.ok("tap")
            except (RedisError, OSError, DatabaseError) as error:
                self.loops.failed("tap", error)
                what = "database error" if isinstance(error, DatabaseError) else "Redis unavailable"
                logger.warning("tap: %s (%s); retrying in %.1fs", what, error, backoff)
                if not isinstance(error, DatabaseError):
                    self.streams = []  # groups may be gone with a restarted Redis
                await pause(self.stopping, backoff)
                backoff = min(backoff * 2, 10.0)
        if ahead is not None:
            await self._last_read_handled(ahead)

    async def _last_read_handled(self, reading: asyncio.Task[list[StreamEntry]]) -> None:
        """On stopping: record what the read ahead took, so that no other worker must claim it a minute later."""
        try:
            entries = await reading
            if entries:
                await self.handle(entries)
        except (RedisError, OSError, DatabaseError) as error:
            logger.warning("tap: the last batch read stays pending for another worker to claim (%s)", error)
