"""SQLite's statements: the published mark as one statement, the WAL checkpoint, the write check, JSON lists."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import Model

from busapp.models import Event
from busapp.store.driver import DriverCursor, driver_cursor
from busapp.store.sql import MARK_SQL, SqlStore, mark_rows, unvouched_query

# SQLite's limit is 32,766 bound values a statement; two a row.
_MARKS_PER_STATEMENT = 10_000
_PAGE_ROWS = 2_000


class SqliteStore(SqlStore):
    """The store on SQLite (WAL), the embedded default of ``make run`` and quick tests."""

    vendor = "sqlite"
    tidies = True
    chain_time_text = 'CAST("time" AS TEXT)'  # as Django stored it: no fraction when it is zero
    chain_details_text = '"details"'

    def events_mark_published(self, events: Sequence[Event], now: dt.datetime) -> None:
        """Mark events published; a lone one outside a transaction is a transaction of its own.

        One statement in autocommit is the same commit without a BEGIN and a COMMIT to pay for.
        """
        rows = mark_rows(events, now)
        if len(rows) == 1 and not connections[DEFAULT_DB_ALIAS].in_atomic_block:
            with driver_cursor() as cursor:
                cursor.execute(MARK_SQL, rows[0])
            return
        with transaction.atomic(), driver_cursor() as cursor:  # one commit, not one per row
            _marks_as_statements(cursor, rows)

    def events_unvouched(self) -> Iterator[tuple[str, str, str]]:
        """Builds the set of batch ids once (``NOT IN`` over ``json_each``) and reads with a plain cursor."""
        in_a_batch = (
            "e.envelope_id IN (SELECT m.value FROM {audit} b, json_each(b.details, '$.events') m "
            "WHERE b.action IN (%s, %s) AND m.value IS NOT NULL)"
        )
        query, params = unvouched_query(in_a_batch)
        with connections[DEFAULT_DB_ALIAS].chunked_cursor() as cursor:
            cursor.execute(query, params)
            for page in iter(partial(cursor.fetchmany, _PAGE_ROWS), []):
                for envelope_id, topic, recorded_at in page:
                    yield str(envelope_id), str(topic), str(recorded_at)

    def write_check(self, model: type[Model], *, wait_seconds: float) -> None:
        """Take the write lock (BEGIN IMMEDIATE) and give it back, waiting at most ``wait_seconds`` for it.

        The caller's connection keeps the shorter wait: the check's thread closes it after.
        """
        with driver_cursor() as cursor:
            cursor.execute(f"PRAGMA busy_timeout = {round(wait_seconds * 1000)}")
        with transaction.atomic():
            transaction.set_rollback(True)

    def tidy(self) -> tuple[int, int]:
        """Copy the WAL into the database file without waiting for anyone (PASSIVE): frames held, frames copied.

        The bus worker runs this every second in a thread of its own, so that publishers never
        pay for a checkpoint and its two fsyncs (bench/README.md).
        """
        with driver_cursor() as cursor:
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
            _busy, held, copied = cursor.fetchone()
        return int(held), int(copied)


def _marks_as_statements(cursor: DriverCursor, rows: Sequence[tuple[str, str, Any, int]]) -> None:
    """Mark rows published with one ``UPDATE ... FROM (VALUES ...)`` per 10,000 events.

    An ``executemany`` steps SQLite once per row, and each step lets go of the GIL and must
    take it back, waiting behind every other busy thread of the web server; one statement
    steps once.
    """
    status, _, published_at, _ = rows[0]
    for start in range(0, len(rows), _MARKS_PER_STATEMENT):
        chunk = rows[start : start + _MARKS_PER_STATEMENT]
        values = ", ".join(["(%s, %s)"] * len(chunk))
        cursor.execute(
            f"UPDATE {Event._meta.db_table} AS e SET status = %s, stream_id = m.column2, "  # noqa: S608
            f"published_at = %s, last_error = '' FROM (VALUES {values}) AS m WHERE e.id = m.column1",
            [status, published_at, *(value for _, stream_id, _, pk in chunk for value in (pk, stream_id))],
        )
