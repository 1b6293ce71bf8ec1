"""PostgreSQL's statements: whole batches as one array per column, commits that need not wait, streamed reads."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.db.models import Model

from busapp.models import Event, EventStatus
from busapp.store.driver import driver_cursor
from busapp.store.sql import MARK_SQL, InsertValues, SqlStore, insert_statement, keys_set, mark_rows, unvouched_query

_PAGE_ROWS = 2_000


class PostgresStore(SqlStore):
    """The store on PostgreSQL, where production runs."""

    vendor = "postgresql"
    chain_time_text = "to_char(\"time\" AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"
    chain_details_text = '"details"::text'

    def rows_insert(self, objs: Sequence[Model]) -> None:
        """Many rows as one ``INSERT ... SELECT * FROM UNNEST(...)``: one array per column, sent in binary.

        As Django's own ``bulk_create`` does here: the statement has as many parameters as the
        model has columns however many rows go in, so the driver parses it once instead of
        scanning thousands of placeholders every call.
        """
        if len(objs) < 2:
            super().rows_insert(objs)
            return
        connection = connections[DEFAULT_DB_ALIAS]
        statement = insert_statement(type(objs[0]), self.vendor)
        getters, insert = statement.getters, InsertValues(connection)
        rows = [[getter(obj, insert) for getter in getters] for obj in objs]
        with driver_cursor(binary=True) as cursor:
            cursor.execute(str(statement.unnest), [list(column) for column in zip(*rows, strict=True)])
            keys_set(objs, cursor.fetchall())

    def events_mark_published(self, events: Sequence[Event], now: dt.datetime) -> None:
        """One statement for the whole batch; in a transaction of its own, one that does not wait for a WAL flush.

        The event rows were committed durably before the send. Losing this mark in a crash
        costs nothing (the tap marks what it reads on the stream), so it does not wait for the
        flush: that halves the fsyncs of a publish. Inside a caller's transaction (the relay's,
        with audit entries) it stays durable.
        """
        rows = mark_rows(events, now)
        own_transaction = not connections[DEFAULT_DB_ALIAS].in_atomic_block
        with transaction.atomic(), driver_cursor(binary=len(rows) > 1) as cursor:
            if own_transaction:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
            if len(rows) == 1:
                cursor.execute(MARK_SQL, rows[0])
                return
            cursor.execute(
                f"UPDATE {Event._meta.db_table} AS e SET status = %s, stream_id = m.stream_id, "  # noqa: S608
                "published_at = %s, last_error = '' FROM UNNEST(%b::bigint[], %b::varchar[]) AS m(id, stream_id) "
                "WHERE e.id = m.id",
                [EventStatus.PUBLISHED.value, rows[0][2], [row[3] for row in rows], [row[1] for row in rows]],
            )

    def chain_reading(self) -> AbstractContextManager[Any]:
        """A server-side cursor lives only in a transaction."""
        return transaction.atomic()

    def events_unvouched(self) -> Iterator[tuple[str, str, str]]:
        """Through a server-side cursor, the batch lists joined as an anti-join, planned for reading every row."""
        in_a_batch = (
            "EXISTS (SELECT 1 FROM {audit} b CROSS JOIN LATERAL jsonb_array_elements_text(b.details -> 'events') "
            "AS m(id) WHERE b.action = %s AND m.id = e.envelope_id)"
        )
        query, params = unvouched_query(in_a_batch)
        connection = connections[DEFAULT_DB_ALIAS]
        with transaction.atomic(), connection.chunked_cursor() as cursor:
            # Every row is read: plan for all of them. A cursor is planned for its first tenth,
            # which chose a nested loop over every batch list per event (a minute for 50,000).
            with connection.cursor() as settings_cursor:
                settings_cursor.execute("SET LOCAL cursor_tuple_fraction = 1.0")
            cursor.execute(query, params)
            for page in iter(partial(cursor.fetchmany, _PAGE_ROWS), []):
                for envelope_id, topic, recorded_at in page:
                    yield str(envelope_id), str(topic), str(recorded_at)

    def write_check(self, model: type[Model], *, wait_seconds: float) -> None:
        """Take the lock every INSERT takes on the table, waiting at most ``wait_seconds``, on a writable server.

        A ``LOCK TABLE`` someone holds or a stuck writer fails it; so does a read-only replica.
        Rolled back: it writes nothing.
        """
        wait = f"{round(wait_seconds * 1000)}ms"
        with transaction.atomic(), connections[DEFAULT_DB_ALIAS].cursor() as cursor:
            cursor.execute(
                "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)", [wait, wait]
            )
            cursor.execute("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')")
            in_recovery, read_only = cursor.fetchone()
            if in_recovery or read_only == "on":
                raise DatabaseError("the database is read-only (a replica, or default_transaction_read_only)")
            cursor.execute(f"LOCK TABLE {model._meta.db_table} IN ROW EXCLUSIVE MODE")
            transaction.set_rollback(True)
