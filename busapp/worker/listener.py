"""The Pub/Sub listener: copies what seed-style publishers ``PUBLISH`` into the ingest stream, once each.

Every worker listens: Pub/Sub keeps nothing for a subscriber that is gone, so with one
elected listener, the seconds until another took over were lost. A killed worker's share is
heard by the others all along, and the heard marks keep the copies to one.
"""

from __future__ import annotations

import asyncio
import json
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from busapp.actions.tap import RAW_KEEP_BYTES
from busapp.publishing import heard_ingest, heard_ingest_script
from busapp.store import store
from busapp.worker.steps import LoopStates, in_db, pause
from busapp.worker.tap import TOPIC_REFRESH_SECONDS, Tap

logger = logging.getLogger(__name__)

# The listener gathers what seed-style publishers send for this long before one look at history.
LISTEN_GATHER_SECONDS = 0.02
LISTEN_BATCH_MOST = 500


class Listener:
    """One worker's Pub/Sub listener, on the topics its tap knows."""

    def __init__(self, *, redis: aioredis.Redis, tap: Tap, stopping: asyncio.Event, loops: LoopStates) -> None:
        self.redis, self.tap, self.stopping, self.loops = redis, tap, stopping, loops
        self._ingest_once = heard_ingest_script(redis)

    async def run(self) -> None:
        """Listen until stopped, listening again (after a second) whenever Redis drops the connection."""
        while not self.stopping.is_set():
            try:
                await self._listen()
            except (RedisError, OSError) as error:
                self.loops.failed("listener", error)
                logger.warning("listener: Redis unavailable (%s)", error)
                await pause(self.stopping, 1.0)

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
                    if not self.tap.topics:
                        await self.tap.refresh_topics()  # not waiting for the tap: every second unheard is lost
                    if wanted := set(self.tap.topics) - subscribed:
                        await pubsub.subscribe(*wanted)
                        subscribed |= wanted
                        logger.info("listener: listening on %d topic(s)", len(subscribed))
                    next_refresh = loop.time() + TOPIC_REFRESH_SECONDS
                if not subscribed:
                    await pause(self.stopping, 0.2)
                    next_refresh = 0.0  # a bus without topics yet: look again soon
                    continue
                reader = reader or asyncio.create_task(_pubsub_read(pubsub, heard))
                batch = await _drain(heard, reader)
                if batch:
                    batch = await in_db(_not_yet_recorded, batch)
                if batch:
                    await self._ingest(batch)
                self.loops.ok("listener")
        finally:
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            await pubsub.aclose()

    async def _ingest(self, batch: list[tuple[bytes, bytes]]) -> int:
        """Add heard messages to the ingest stream unless another worker did already; how many were added."""
        return await heard_ingest(self._ingest_once, batch)


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
    while len(batch) < LISTEN_BATCH_MOST and wait > 0:
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
    recorded = store().events_recorded({envelope_id for envelope_id in ids if envelope_id})
    return [message for message, envelope_id in zip(batch, ids, strict=True) if envelope_id not in recorded]
