"""The bus worker: relay, tap, Pub/Sub listener, fan-out and periodic jobs, each loop supervised.

One asyncio loop; every database step runs in Django's sync thread (``steps.in_db``). Its parts:
``tap`` reads the topic streams and the ingest stream through the workers' consumer group and
has ``busapp.actions.tap`` write what it read into history; ``receipts`` records what subscribers
put on the receipts stream; ``listener`` copies what seed-style publishers ``PUBLISH`` into the
ingest stream; ``fanout`` feeds live pages; ``jobs`` is the table of periodic jobs (relay,
scheduler, tidying, the audit check, bulk actions, drift, Pub/Sub listener samples, the SQLite
checkpoint).
Several workers may run: they share the streams through the group and the leased jobs by lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connections
from redis.exceptions import LockError, RedisError

from busapp.errors import survivable
from busapp.heartbeats import (
    FORGET_AFTER_SECONDS,
    HEARTBEAT_EVERY_SECONDS,
    WORKERS_KEY,
    LoopState,
    WorkerBeat,
    beat_decode,
)
from busapp.redis_connections import bus_async_client_new
from busapp.worker.fanout import FanOut
from busapp.worker.jobs import OUTAGES, Job, jobs_table
from busapp.worker.listener import Listener
from busapp.worker.receipts import ReceiptsReader
from busapp.worker.steps import LoopStates, pause
from busapp.worker.tap import Tap

logger = logging.getLogger(__name__)

# Periodic jobs that must not run twice at once (tidy, the audit check) hold a Redis lease while they run.
LEASE_PREFIX = "hms:lease:"
# A supervised loop that fails is started again after this, doubling up to the most.
RESTART_BACKOFF_SECONDS = 0.5
RESTART_BACKOFF_MOST_SECONDS = 30.0

T = TypeVar("T")


class BusWorker:
    """Relay, tap and fan-out in one process; several may run, sharing the streams through a consumer group."""

    def __init__(self, *, name: str | None = None, claim_idle_ms: int | None = None) -> None:
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.redis = bus_async_client_new(socket_connect_timeout=1)
        self.stopping = asyncio.Event()
        self.fanout = FanOut()
        # Each loop's state and errors, told to Redis by every heartbeat.
        self.loops = LoopStates()
        self.tap = Tap(
            redis=self.redis,
            name=self.name,
            claim_idle_ms=settings.BUS_CLAIM_IDLE_MS if claim_idle_ms is None else claim_idle_ms,
            fanout=self.fanout,
            stopping=self.stopping,
            loops=self.loops,
        )
        self.listener = Listener(redis=self.redis, tap=self.tap, stopping=self.stopping, loops=self.loops)
        self.receipts = ReceiptsReader(
            redis=self.redis,
            name=self.name,
            claim_idle_ms=self.tap.claim_idle_ms,
            stopping=self.stopping,
            loops=self.loops,
        )
        self.started_at = time.time()

    def stop(self) -> None:
        """Ask every loop to finish what it holds and return."""
        self.stopping.set()

    async def run(self) -> None:
        """Run every loop, each supervised, until ``stop()``; nothing is left half-done."""
        loops: dict[str, Callable[[], Awaitable[None]]] = {
            "tap": self.tap.run,
            "listener": self.listener.run,
            "receipts": self.receipts.run,
            "heartbeat": self._heartbeat_loop,
        }
        for job in jobs_table(layer=self.fanout.layer):
            loops[job.name] = functools.partial(self._job_loop, job)
        for name in loops:
            self.loops[name] = LoopState()
        tasks = [asyncio.create_task(self._supervise(name, loop)) for name, loop in loops.items()]
        try:
            await asyncio.gather(*tasks)
        finally:
            self.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.fanout.flush()
            with contextlib.suppress(DatabaseError):
                await self.tap.settle_seen_pending(older_than=0.0)
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
                if not survivable(error):
                    raise
                state.failed(error)
                if time.monotonic() - started > RESTART_BACKOFF_MOST_SECONDS:
                    backoff = RESTART_BACKOFF_SECONDS  # it ran well for a while: this is a new failure
                logger.exception("%s loop failed (%d so far); starting it again in %.1fs", name, state.errors, backoff)
                await pause(self.stopping, backoff)
                backoff = min(backoff * 2, RESTART_BACKOFF_MOST_SECONDS)
            else:
                break  # a loop returns only when stopping, or when it has nothing to do here
        state.state = "stopped"

    async def _job_loop(self, job: Job) -> None:
        """Run a job's step every ``job.every`` seconds (again at once while it finds work), under its lease if any."""
        while not self.stopping.is_set():
            handled = 0
            try:
                if job.lease_seconds is None:
                    handled = await job.step()
                elif (leased := await self.leased(job.name, job.lease_seconds, job.step)) is not None:
                    handled = leased
                elif job.waiting:
                    logger.info("%s: %s", job.name, job.waiting)
                self.loops.ok(job.name)
            except job.survives as error:
                self.loops.failed(job.name, error)
                outage = isinstance(error, OUTAGES)
                what = "database error" if isinstance(error, DatabaseError) else "Redis unavailable"
                logger.warning("%s: %s (%s)", job.name, what if outage else "failed", error, exc_info=not outage)
            if handled and job.did:
                logger.info("%s: %s", job.name, job.did % handled)
            if not (handled and job.again_at_once):
                await pause(self.stopping, job.every)

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
                self.loops.ok("heartbeat")
            except (RedisError, OSError) as error:
                self.loops.failed("heartbeat", error)
            await pause(self.stopping, HEARTBEAT_EVERY_SECONDS)


async def run_until_signalled(worker: BusWorker, on_ready: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run the worker, stopping it cleanly on SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)
    if on_ready is not None:
        await on_ready()
    await worker.run()
