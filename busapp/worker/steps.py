"""How the worker's loops run: database work in Django's sync thread, every loop's state kept for the heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import DatabaseError, connections

from busapp.heartbeats import LoopState

T = TypeVar("T")


async def in_db(function: Callable[..., T], *args: Any) -> T:
    """Run a database function in Django's sync thread, dropping a broken connection first."""

    def call() -> T:
        _broken_connections_close()
        return function(*args)

    return await sync_to_async(call, thread_sensitive=True)()


class DatabaseThread:
    """A thread of its own, with its own database connection: a loop whose work must not queue behind the others'.

    The receipts stream at high rates would otherwise hold Django's one sync thread, which the
    tap, the relay and the drift check share, for most of every second.
    """

    def __init__(self, name: str) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """Run a database function in this thread, dropping a broken connection first."""

        def call() -> T:
            _broken_connections_close()
            return function(*args)

        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

    async def close(self) -> None:
        """Close the thread's connections and let the thread end."""
        with contextlib.suppress(DatabaseError):  # a database that went away: nothing left to close
            await self.run(connections.close_all)
        self.executor.shutdown(wait=True)


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


async def pause(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep, waking early when the worker is asked to stop."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)


class LoopStates(dict[str, LoopState]):
    """Each loop's state and errors, by loop name: every heartbeat tells Redis."""

    def ok(self, name: str) -> None:
        """Say a loop's step went through."""
        self.setdefault(name, LoopState()).state = "running"

    def failed(self, name: str, error: BaseException) -> None:
        """Count a failed step of a loop (it retries on its own, or its supervisor starts it again)."""
        self.setdefault(name, LoopState()).failed(error)
