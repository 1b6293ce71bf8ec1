"""PostgreSQL's statements: whole batches as one array per column, commits that need not wait, streamed reads."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from functools import cache, partial
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.db.models import Model, QuerySet

from busapp.models import AuditEntry, AuditHead, Event, EventStatus
from busapp.store.driver import driver_cursor
from busapp.store.sql import (
    MARK_SQL,
    InsertStatement,
    InsertValues,
    SqlStore,
    insert_statement,
    keys_set,
    mark_rows,
    unvouched_query,
)

_PAGE_ROWS = 2_000
# The published mark of one event or of many (ids and stream ids as two arrays), and the same
# setting synchronous_commit off for the statement's own transaction (set_config's is_local).
_NO_FLUSH = "(SELECT set_config('synchronous_commit', 'off', true)) AS lazy"
_MARK_ONE_LAZY = MARK_SQL.replace(" WHERE id = %s", f" FROM {_NO_FLUSH} WHERE id = %s")
_MARK_MANY = (
    f"UPDATE {Event._meta.db_table} AS e SET status = %s, stream_id = m.stream_id, "  # noqa: S608
    "published_at = %s, last_error = '' FROM UNNEST(%b::bigint[], %b::varchar[]) AS m(id, stream_id) "
    "WHERE e.id = m.id"
)
_MARK_MANY_LAZY = _MARK_MANY.replace(" AS m(id, stream_id) ", f" AS m(id, stream_id), {_NO_FLUSH} ")


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
        with driver_cursor() as cursor:
            cursor.execute(
                f"{statement.into} SELECT * FROM UNNEST({statement.arrays}) RETURNING id",  # noqa: S608 (from the model)
                _columns(objs, InsertValues(connection)),
            )
            keys_set(objs, cursor.fetchall())

    def chain_write(self, objs: Sequence[Model], entries: Sequence[AuditEntry], expected: tuple[int, str]) -> bool:
        """One statement: one round trip, and a transaction of its own outside the caller's.

        The head's conditional move and both inserts are data-modifying CTEs; the inserts take
        their rows only if the head moved.

        Another writer that moved the head first holds its row lock until it commits; this
        statement then finds the head elsewhere, inserts nothing and answers False.
        """
        connection = connections[DEFAULT_DB_ALIAS]
        insert = InsertValues(connection)
        params: list[Any] = [entries[-1].seq, entries[-1].hash, *expected]
        params += _values(objs, insert) + _values(entries, insert)
        sql = _chain_write_sql(type(objs[0]) if objs else None, len(objs) > 1, len(entries) > 1)
        with driver_cursor() as cursor:
            cursor.execute(sql, params, prepare=True)
            row_ids, entry_ids = cursor.fetchone()
        if entry_ids is None:
            return False
        keys_set(objs, [(pk,) for pk in row_ids or []])
        keys_set(entries, [(pk,) for pk in entry_ids])
        return True

    def events_mark_published(self, events: Sequence[Event], now: dt.datetime) -> None:
        """One statement for any number of events; on its own, one whose commit does not wait for a WAL flush.

        The event rows were committed durably before the send. Losing this mark in a crash
        costs nothing (the tap marks what it reads on the stream), so outside a caller's
        transaction the statement sets ``synchronous_commit`` off for its own transaction
        alone: one round trip, no fsync. Inside a caller's transaction (the relay's, with
        audit entries) it stays durable with it.
        """
        rows = mark_rows(events, now)
        lazy = not connections[DEFAULT_DB_ALIAS].in_atomic_block
        with driver_cursor() as cursor:
            if len(rows) == 1:
                cursor.execute(_MARK_ONE_LAZY if lazy else MARK_SQL, rows[0], prepare=True)
                return
            cursor.execute(
                _MARK_MANY_LAZY if lazy else _MARK_MANY,
                [EventStatus.PUBLISHED.value, rows[0][2], [row[3] for row in rows], [row[1] for row in rows]],
            )

    def rows_estimate(self, rows: QuerySet[Any]) -> int | None:
        """``EXPLAIN``'s row estimate for the query: the planner's statistics, read in a millisecond at any size."""
        try:
            sql, params = rows.query.sql_with_params()
        except EmptyResultSet:  # an empty IN list: Django knows there is nothing without asking
            return 0
        with connections[rows.db].cursor() as cursor:
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
            (plan,) = cursor.fetchone()
        document = json.loads(plan) if isinstance(plan, str) else plan
        return int(document[0]["Plan"]["Plan Rows"])

    def chain_reading(self) -> AbstractContextManager[Any]:
        """A server-side cursor lives only in a transaction."""
        return transaction.atomic()

    def events_unvouched(self) -> Iterator[tuple[str, str, str]]:
        """Through a server-side cursor, the batch lists joined as an anti-join, planned for reading every row."""
        in_a_batch = (
            "EXISTS (SELECT 1 FROM {audit} b CROSS JOIN LATERAL jsonb_array_elements_text(b.details -> 'events') "
            "AS m(id) WHERE b.action IN (%s, %s) AND m.id = e.envelope_id)"
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


def _values(objs: Sequence[Model], insert: InsertValues) -> list[Any]:
    """The parameters of ``_insert_if_moved``'s rows: one row's values, or one list per column for many."""
    if len(objs) == 1:
        getters = insert_statement(type(objs[0]), "postgresql").getters
        return [getter(objs[0], insert) for getter in getters]
    return _columns(objs, insert)


def _columns(objs: Sequence[Model], insert: InsertValues) -> list[list[Any]]:
    """The objects' database values as one list per column (what ``UNNEST`` takes); none for no objects."""
    if not objs:
        return []
    getters = insert_statement(type(objs[0]), "postgresql").getters
    rows = [[getter(obj, insert) for getter in getters] for obj in objs]
    return [list(column) for column in zip(*rows, strict=True)]


@cache
def _chain_write_sql(model: type[Model] | None, many_rows: bool, many_entries: bool) -> str:
    """``chain_write``'s statement for rows of ``model`` (or none) and audit entries, one or many of each."""
    head = AuditHead._meta.db_table
    moved = f"moved AS (UPDATE {head} SET seq = %s, hash = %s WHERE id = 1 AND seq = %s AND hash = %s RETURNING 1)"  # noqa: S608
    ctes = [moved]
    if model is not None:
        ctes.append(f"new_rows AS ({_insert_if_moved(insert_statement(model, 'postgresql'), many_rows)})")
    ctes.append(f"new_entries AS ({_insert_if_moved(insert_statement(AuditEntry, 'postgresql'), many_entries)})")
    row_ids = "(SELECT array_agg(id ORDER BY id) FROM new_rows)" if model is not None else "NULL::bigint[]"
    return f"WITH {', '.join(ctes)} SELECT {row_ids}, (SELECT array_agg(id ORDER BY id) FROM new_entries)"  # noqa: S608


def _insert_if_moved(statement: InsertStatement, many: bool) -> str:
    """An INSERT that takes its rows only if the ``moved`` CTE moved the head.

    Many rows come as one array per column (``UNNEST``); one row as typed scalars, which
    psycopg sends for a fraction of what dumping one-element arrays cost.
    """
    rows = f"* FROM UNNEST({statement.arrays})" if many else statement.typed
    return f"{statement.into} SELECT {rows} WHERE EXISTS (SELECT 1 FROM moved) RETURNING id"  # noqa: S608
