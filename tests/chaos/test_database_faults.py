"""The database fails under API load: a write lock held 10 s; PostgreSQL sessions terminated."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import connection

from busapp.models import Event
from tests.chaos.harness import APP_SESSION_NAME, Report, api_row, api_scenario, finish
from tests.support import RedisServer, database_url

pytestmark = [pytest.mark.chaos, pytest.mark.usefixtures("demo_committed")]

LOCK_SECONDS = 10.0
TERMINATIONS = 3


@contextmanager
def _write_lock_held() -> Iterator[None]:
    """Hold the database's write lock on the history from another connection of this process, as a long migration would.

    SQLite: a transaction that took the write lock (``BEGIN IMMEDIATE``); PostgreSQL: ``LOCK TABLE``
    on the events table in EXCLUSIVE mode (reads go on, writes wait).
    """
    if connection.vendor == "sqlite":
        holder = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    import psycopg

    with psycopg.connect(database_url()) as locker:
        locker.execute(f"LOCK TABLE {Event._meta.db_table} IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            locker.rollback()


def test_a_write_lock_held_ten_seconds_under_api_load_loses_doubles_and_breaks_nothing(
    chaos_redis: RedisServer, token: str, report: Report
):
    started, cluster, heard, bus, load = api_scenario(chaos_redis, token)
    try:
        load.start()
        load.wait_for_accepted(100)
        with _write_lock_held():
            time.sleep(LOCK_SECONDS)  # the lock held: the fault being injected
        fault_end = time.monotonic()
        load.wait_for_accepted(100)
    finally:
        load.stop()
    row = api_row(
        f"f. database write lock {LOCK_SECONDS:.0f} s",
        load=load,
        cluster=cluster,
        bus=bus,
        heard=heard,
        fault_end=fault_end,
    )
    finish(row, report=report, cluster=cluster, redis_url=chaos_redis.url(0), started=started)


def _terminate_other_sessions() -> int:
    """``pg_terminate_backend`` every session of the web servers and the workers; how many."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s",
            [APP_SESSION_NAME],
        )
        (count,) = cursor.fetchone()
    return int(count)


def test_postgresql_sessions_terminated_under_api_load_cost_no_request_and_no_event(
    chaos_redis: RedisServer, token: str, report: Report
):
    if connection.vendor != "postgresql":
        pytest.skip("pg_terminate_backend is PostgreSQL's: run with DATABASE_URL=postgres://...")
    started, cluster, heard, bus, load = api_scenario(chaos_redis, token)
    terminated = []
    try:
        load.start()
        for _ in range(TERMINATIONS):
            load.wait_for_accepted(100)
            terminated.append(_terminate_other_sessions())
        fault_end = time.monotonic()
        load.wait_for_accepted(100)
    finally:
        load.stop()
    row = api_row(
        "g. PostgreSQL sessions terminated", load=load, cluster=cluster, bus=bus, heard=heard, fault_end=fault_end
    )
    row.notes.append(f"terminated {terminated} sessions in {TERMINATIONS} rounds")
    if sum(terminated) == 0:
        row.problems.append("no session of the web servers or the workers was found to terminate")
    finish(row, report=report, cluster=cluster, redis_url=chaos_redis.url(0), started=started)
