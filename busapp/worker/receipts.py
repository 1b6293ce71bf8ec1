"""The receipts reader: records what subscribers put on the receipts stream, in bulk, then acknowledges it.

Through the workers' consumer group, like the tap: several workers share the stream, an entry
is acknowledged once its receipt is committed (or refused), and what a stopped worker held is
claimed by the others. The action shows recorded receipts on the live pages of their topics.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import redis.asyncio as aioredis
from django.db import DatabaseError
from redis.exceptions import RedisError

from busapp.actions.receipts import StreamReceipts, receipts_stream_record
from busapp.publishing import (
    RECEIPTS_STREAM,
    StreamEntry,
    receipts_refused_count,
    receipts_trim,
    tap_entries_ack,
    tap_entries_claim,
    tap_entries_read,
    tap_groups_ensure,
)
from busapp.worker.steps import DatabaseThread, LoopStates, pause

logger = logging.getLogger(__name__)

READ_COUNT = 2000
CLAIM_EVERY_SECONDS = 5.0
# What every group is done with is dropped from the stream this often (a stream keeps acknowledged entries).
TRIM_EVERY_SECONDS = 5.0
# A receipt for an event not (yet) in history waits this long for the tap to record it, then is refused.
WAIT_FOR_EVENT_SECONDS = 30.0


class ReceiptsReader:
    """One worker's reader of the receipts stream."""

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        name: str,
        claim_idle_ms: int,
        stopping: asyncio.Event,
        loops: LoopStates,
    ) -> None:
        self.redis, self.name, self.claim_idle_ms = redis, name, claim_idle_ms
        self.stopping, self.loops = stopping, loops
        self.grouped = False
        # Its own thread and connection: at high rates it would hold the tap's and the drift check's.
        self.database = DatabaseThread("receipts")
        # Entries whose event history does not hold yet: tried again with the next batch.
        self.waiting: list[StreamEntry] = []

    async def handle(self, entries: list[StreamEntry]) -> StreamReceipts:
        """Record a batch, acknowledge all but those still waiting for their event, tell the live pages."""
        wait_until = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=WAIT_FOR_EVENT_SECONDS)
        outcome = await self.database.run(lambda: receipts_stream_record(entries, wait_until=wait_until))
        waiting = {entry.entry_id for entry in outcome.waiting}
        await tap_entries_ack(self.redis, [entry for entry in entries if entry.entry_id not in waiting])
        self.waiting = outcome.waiting
        if outcome.refused:
            await receipts_refused_count(self.redis, outcome.refused)
            logger.warning("receipts: refused %s; first: %s", dict(outcome.refused), outcome.first_problem)
        return outcome

    async def run(self) -> None:
        """Read, record, acknowledge; claim a stopped worker's entries and trim what is done now and then."""
        loop = asyncio.get_running_loop()
        next_claim = next_trim = 0.0
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                if not self.grouped:
                    await tap_groups_ensure(self.redis, [RECEIPTS_STREAM])
                    self.grouped = True
                if loop.time() >= next_claim:
                    while (claimed := await self._claim()) and not self.stopping.is_set():
                        await self.handle(claimed)
                    next_claim = loop.time() + CLAIM_EVERY_SECONDS
                if loop.time() >= next_trim:
                    await receipts_trim(self.redis)
                    next_trim = loop.time() + TRIM_EVERY_SECONDS
                block_ms = 1000 if self.waiting else 100
                entries = await tap_entries_read(
                    self.redis, self.name, [RECEIPTS_STREAM], count=READ_COUNT, block_ms=block_ms
                )
                if entries or self.waiting:
                    await self.handle(self.waiting + entries)
                backoff = 0.5
                self.loops.ok("receipts")
            except (RedisError, OSError, DatabaseError) as error:
                self.loops.failed("receipts", error)
                logger.warning("receipts: %s; retrying in %.1fs", error, backoff)
                self.grouped = isinstance(error, DatabaseError) and self.grouped
                await pause(self.stopping, backoff)
                backoff = min(backoff * 2, 10.0)
        await self.database.close()

    async def _claim(self) -> list[StreamEntry]:
        """Up to a batch of entries a stopped worker read and never acknowledged."""
        waiting = {entry.entry_id for entry in self.waiting}
        claimed = await tap_entries_claim(
            self.redis, self.name, [RECEIPTS_STREAM], idle_ms=self.claim_idle_ms, most=READ_COUNT
        )
        return [entry for entry in claimed if entry.entry_id not in waiting]
