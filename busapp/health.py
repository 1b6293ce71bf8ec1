"""``/healthz``: whether the database takes a write, Redis answers and a bus worker beats, told within 3 seconds.

Each check runs in a thread of its own with a deadline, never in the thread the web
process shares among its requests: a stalled Redis or a held database lock makes the answer
503 in time instead of holding up every other request. A check still stuck from an earlier
call fails the next one at once, so stuck checks never pile up.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from asgiref.sync import sync_to_async
from django.db import DatabaseError, connections

from busapp.heartbeats import WORKERS_KEY, WorkerBeat, beats_from_hash
from busapp.models import Event
from busapp.redis_connections import bus_address, bus_client_new
from busapp.selectors import pending_event_count
from busapp.store import store

# Each check's deadline: both run at once, so the answer comes within this and a little.
CHECK_SECONDS = 1.5

_clients: dict[str, redis.Redis] = {}


def health_redis() -> redis.Redis:
    """A client for health checks alone, with one-second timeouts: the bus's own waits up to five."""
    address = bus_address()
    if address not in _clients:
        _clients[address] = bus_client_new(socket_connect_timeout=1, socket_timeout=1)
    return _clients[address]


@dataclass
class CheckResult:
    """One check: whether it passed, what it found, or why it failed."""

    ok: bool
    value: Any = None
    problem: str = ""


@dataclass
class Health:
    """The whole answer."""

    database: CheckResult
    redis: CheckResult
    workers: list[WorkerBeat] = field(default_factory=list)

    @property
    def workers_alive(self) -> list[WorkerBeat]:
        """Workers that beat within the last 15 seconds."""
        return [beat for beat in self.workers if beat.alive()]

    @property
    def ok(self) -> bool:
        """Database writable, Redis answering, at least one live worker."""
        return self.database.ok and self.redis.ok and bool(self.workers_alive)

    def as_json(self) -> dict[str, Any]:
        """What ``/healthz`` answers."""
        problems = [f"database: {self.database.problem}"] if not self.database.ok else []
        problems += [f"redis: {self.redis.problem}"] if not self.redis.ok else []
        if self.redis.ok and not self.workers_alive:
            problems.append("workers: no bus worker has beaten in the last 15 s: start `manage.py bus_worker`")
        return {
            "database": self.database.ok,
            "redis": self.redis.ok,
            "workers": len(self.workers_alive),
            "pending_events": self.database.value if self.database.ok else None,
            "problems": problems,
        }


def _database_check() -> int:
    """Take a write lock and let it go; then count what waits for Redis."""
    try:
        store().write_check(Event, wait_seconds=1.0)
        return pending_event_count()
    finally:
        connections.close_all()  # this thread's own connection: back to the pool, or closed


def _redis_check() -> list[WorkerBeat]:
    """PING, then read the workers' heartbeats."""
    client = health_redis()
    client.ping()
    return beats_from_hash(client.hgetall(WORKERS_KEY))


def workers_read() -> list[WorkerBeat] | None:
    """Every worker's last heartbeat, newest first; None when Redis does not answer within a second."""
    try:
        return beats_from_hash(health_redis().hgetall(WORKERS_KEY))
    except (redis.RedisError, OSError):
        return None


_running = {"database": threading.Lock(), "redis": threading.Lock()}


async def _bounded(name: str, check: Callable[[], Any]) -> CheckResult:
    """Run a check in a thread of its own, failing it past CHECK_SECONDS or while an earlier one is stuck."""
    running = _running[name]
    if not running.acquire(blocking=False):
        return CheckResult(False, problem="an earlier check has not come back yet")

    def guarded() -> Any:
        try:
            return check()
        finally:
            running.release()

    try:
        value = await asyncio.wait_for(sync_to_async(guarded, thread_sensitive=False)(), CHECK_SECONDS)
    except TimeoutError:
        return CheckResult(False, problem=f"no answer within {CHECK_SECONDS} s")
    except (DatabaseError, redis.RedisError, OSError) as error:
        return CheckResult(False, problem=f"{type(error).__name__}: {error}"[:300])
    return CheckResult(True, value)


async def health_check() -> Health:
    """Every check at once, each bounded."""
    database, bus = await asyncio.gather(_bounded("database", _database_check), _bounded("redis", _redis_check))
    return Health(database, bus, bus.value if bus.ok else [])
