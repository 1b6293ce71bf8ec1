"""The raw SQL both databases share: row inserts, the chain head, the lookups every publish and tap batch runs.

On the publish hot path ``Model.save()`` and ``bulk_create()`` cost more per row than the
database does (bench/README.md, publish.py). Rows are written with one prepared statement
per model. Values come out as the ORM would write them: JSON and other fields through the
field's own ``get_db_prep_save``, datetimes through the connection's adapter (once per
distinct value: a batch shares them), foreign keys as their ids. Every ``auto_now`` or
``auto_now_add`` field of one call gets the same instant. Only for models whose primary key
is an auto-increment ``id``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import DEFAULT_DB_ALIAS, connections, models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model, QuerySet
from django.utils import timezone

from busapp.models import AuditEntry, AuditHead, Event, EventStatus, EventType, SchemaVersion, SchemaVersionState, Topic
from busapp.store.base import (
    BATCH_VOUCHING_ACTIONS,
    VOUCHING_ACTIONS,
    ActiveVersionRow,
    ChainRow,
    RecordedEvent,
    chain_write_in_steps,
)
from busapp.store.driver import datetime_for_db, driver_cursor

# SQLite allows 32,766 bound values per statement; stay well under it on every database.
MAX_VALUES_PER_STATEMENT = 30_000
# Values of these fields go to the driver as they are (str, int, bool, a foreign key's id).
_PASSED_AS_IS = (models.CharField, models.TextField, models.IntegerField, models.BooleanField, models.ForeignKey)
# Envelope ids looked up per statement by the tap.
_IDS_PER_QUERY = 500
_CHAIN_PAGE_ROWS = 5_000


class SqlStore:
    """The statements SQLite and PostgreSQL share; each database's store adds its own."""

    vendor = ""
    tidies = False

    def rows_insert(self, objs: Sequence[Model]) -> None:
        """INSERT new objects of one model, in as few ``VALUES`` statements as the database allows; set their keys."""
        if not objs:
            return
        connection = connections[DEFAULT_DB_ALIAS]
        statement = insert_statement(type(objs[0]), self.vendor)
        getters, insert = statement.getters, InsertValues(connection)
        with driver_cursor() as cursor:
            per_statement = max(1, MAX_VALUES_PER_STATEMENT // len(getters))
            for start in range(0, len(objs), per_statement):
                chunk = objs[start : start + per_statement]
                params = [getter(obj, insert) for obj in chunk for getter in getters]
                cursor.execute(statement.head + ", ".join([statement.row] * len(chunk)) + " RETURNING id", params)
                keys_set(chunk, cursor.fetchall())

    def audit_head_lock(self) -> tuple[int, str]:
        """The chain head, locked (``FOR UPDATE`` where the database has it) until the transaction ends."""
        connection = connections[DEFAULT_DB_ALIAS]
        lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
        query = f"SELECT seq, hash FROM {AuditHead._meta.db_table} WHERE id = 1{lock}"  # noqa: S608
        with driver_cursor() as cursor:
            cursor.execute(query)
            row = cursor.fetchone()
            if row is None:
                # The first entry ever: create the head (a second writer waits on its key, then
                # finds it), and lock it like any other time.
                AuditHead.objects.get_or_create(pk=1)
                cursor.execute(query)
                row = cursor.fetchone()
        return int(row[0]), str(row[1])

    def audit_head_move(self, newest: tuple[int, str], expected: tuple[int, str] | None) -> bool:
        """Move the head with one conditional UPDATE, which both checks and moves it."""
        table = AuditHead._meta.db_table
        with driver_cursor() as cursor:
            if expected is None:  # the head is locked by this transaction already
                cursor.execute(f"UPDATE {table} SET seq = %s, hash = %s WHERE id = 1", list(newest), prepare=True)  # noqa: S608
                return True
            cursor.execute(
                f"UPDATE {table} SET seq = %s, hash = %s WHERE id = 1 AND seq = %s AND hash = %s",  # noqa: S608
                [*newest, *expected],
            )
            return cursor.rowcount == 1

    def chain_write(self, objs: Sequence[Model], entries: Sequence[AuditEntry], expected: tuple[int, str]) -> bool:
        """In one transaction: move the head from ``expected`` to the last entry, then insert the rows and entries."""
        return chain_write_in_steps(self, objs, entries, expected)

    def audit_head_snapshot(self) -> tuple[int, str, int]:
        """The head and the newest entry's seq in one statement, so at one moment."""
        head, entries = AuditHead._meta.db_table, AuditEntry._meta.db_table
        with driver_cursor() as cursor:
            cursor.execute(
                f"SELECT (SELECT seq FROM {head} WHERE id = 1), (SELECT hash FROM {head} WHERE id = 1), "  # noqa: S608
                f"(SELECT MAX(seq) FROM {entries})"
            )
            head_seq, head_hash, newest_seq = cursor.fetchone()
        return int(head_seq or 0), str(head_hash or ""), int(newest_seq or 0)

    # How each database writes an entry's time and details as text for the chain check.
    chain_time_text = ""
    chain_details_text = ""

    def chain_reading(self) -> AbstractContextManager[Any]:
        """What a streamed read of the chain runs inside (PostgreSQL: a transaction, for its server-side cursor)."""
        return nullcontext()

    @contextmanager
    def audit_chain_pages(self, after_seq: int, through_seq: int) -> Iterator[Iterator[list[ChainRow]]]:
        """The entries as raw text through one streamed cursor, a page at a time."""
        connection = connections[DEFAULT_DB_ALIAS]
        quote = connection.ops.quote_name
        query = (
            f"SELECT seq, {self.chain_time_text}, actor_name, action, target, {self.chain_details_text}, "  # noqa: S608
            f"prev_hash, hash FROM {quote(AuditEntry._meta.db_table)} WHERE seq > %s AND seq <= %s ORDER BY seq"
        )
        with self.chain_reading(), connection.chunked_cursor() as cursor:
            cursor.execute(query, [after_seq, through_seq])
            yield iter(partial(cursor.fetchmany, _CHAIN_PAGE_ROWS), [])

    def version_active_row(self, topic: str, event_type: str) -> ActiveVersionRow | None:
        """One prepared statement: an ORM query's compilation cost more than the query."""
        with driver_cursor() as cursor:
            cursor.execute(_active_version_sql(), [topic, event_type, SchemaVersionState.DISABLED.value], prepare=True)
            row = cursor.fetchone()
        if row is None:
            return None
        version_id, number, fingerprint, event_type_id, topic_id, sensitive, retention, state = row
        return ActiveVersionRow(
            version_id, number, fingerprint, event_type_id, topic_id, bool(sensitive), retention, state
        )

    def events_recorded(self, envelope_ids: set[str]) -> dict[str, RecordedEvent]:
        """One indexed query per 500 ids: the tap asks this for every batch it reads."""
        found: dict[str, RecordedEvent] = {}
        ids = list(envelope_ids)
        table = Event._meta.db_table
        with driver_cursor() as cursor:
            for start in range(0, len(ids), _IDS_PER_QUERY):
                chunk = ids[start : start + _IDS_PER_QUERY]
                cursor.execute(
                    f"SELECT envelope_id, id, status, source, publisher_name FROM {table}"  # noqa: S608 (names, not input)
                    f" WHERE envelope_id IN ({', '.join(['%s'] * len(chunk))})",
                    chunk,
                )
                for envelope_id, pk, status, source, publisher in cursor.fetchall():
                    found[envelope_id] = RecordedEvent(pk, status, source, publisher)
        return found

    def rows_fetch(self, rows: QuerySet[Any]) -> list[tuple[Any, ...]]:
        """The query's SQL run on a plain cursor: rows as the driver returns them."""
        try:
            sql, params = rows.query.sql_with_params()
        except EmptyResultSet:  # an empty IN list: Django knows there is nothing without asking
            return []
        with connections[rows.db].cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())

    def rows_estimate(self, rows: QuerySet[Any]) -> int | None:
        """SQLite's planner gives no row estimates."""
        return None

    def tidy(self) -> tuple[int, int] | None:
        """Nothing to tidy."""
        return None


MARK_SQL = (
    f"UPDATE {Event._meta.db_table} SET status = %s, stream_id = %s, published_at = %s, last_error = '' "  # noqa: S608
    "WHERE id = %s"
)


def mark_rows(events: Sequence[Event], now: dt.datetime) -> list[tuple[str, str, Any, int]]:
    """The published mark's parameters, one row per event."""
    published_at = datetime_for_db(connections[DEFAULT_DB_ALIAS], now)
    return [(EventStatus.PUBLISHED.value, str(event.stream_id), published_at, int(event.pk)) for event in events]


def unvouched_query(in_a_batch: str) -> tuple[str, list[str]]:
    """The query of history rows no audit entry names, given the database's test of "named in a batch's list"."""
    quote = connections[DEFAULT_DB_ALIAS].ops.quote_name
    events, topics, audit = (quote(model._meta.db_table) for model in (Event, Topic, AuditEntry))
    query = (
        f"SELECT e.envelope_id, t.name, CAST(e.created_at AS TEXT) FROM {events} e "  # noqa: S608
        f"JOIN {topics} t ON t.id = e.topic_id "
        f"WHERE NOT EXISTS (SELECT 1 FROM {audit} a WHERE a.target = 'event:' || e.envelope_id "
        f"AND a.action IN (%s, %s)) AND NOT {in_a_batch.format(audit=audit)} ORDER BY e.id"
    )
    return query, [*VOUCHING_ACTIONS, *BATCH_VOUCHING_ACTIONS]


@cache
def _active_version_sql() -> str:
    """``SchemaVersion.objects.active()`` for one topic's event type, written out (the ORM store is its oracle)."""
    return (
        "SELECT sv.id, sv.version, sv.fingerprint, et.id, t.id, t.sensitive, t.stream_retention, sv.state "  # noqa: S608
        f"FROM {SchemaVersion._meta.db_table} sv "
        f"JOIN {EventType._meta.db_table} et ON et.id = sv.event_type_id "
        f"JOIN {Topic._meta.db_table} t ON t.id = et.topic_id "
        "WHERE t.name = %s AND et.name = %s AND sv.state <> %s ORDER BY sv.version DESC LIMIT 1"
    )


class InsertValues:
    """What one ``rows_insert`` call shares between its rows: the connection, one creation time, adapted datetimes."""

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        self.connection = connection
        self.now = timezone.now()  # every auto_now(_add) field of one INSERT gets the same instant
        self.adapted: dict[dt.datetime, Any] = {}

    def datetime(self, value: dt.datetime | None) -> Any:
        """A datetime as the driver takes it, adapted once per distinct value (a batch shares most of them)."""
        if value is None:
            return None
        adapted = self.adapted.get(value)
        if adapted is None:
            adapted = self.adapted[value] = datetime_for_db(self.connection, value)
        return adapted


# Reads one column's value off an object, adapted for the insert it is part of.
ValueGetter = Callable[[Model, "InsertValues"], Any]


def _value_getter(field: Field[Any, Any]) -> ValueGetter:
    """How to read one field's database value off an object."""
    attname = field.attname
    if isinstance(field, _PASSED_AS_IS):
        return lambda obj, insert: getattr(obj, attname)
    if isinstance(field, models.DateTimeField):
        if field.auto_now or field.auto_now_add:

            def stamped(obj: Model, insert: InsertValues) -> Any:
                setattr(obj, attname, insert.now)
                return insert.datetime(insert.now)

            return stamped
        return lambda obj, insert: insert.datetime(getattr(obj, attname))
    return lambda obj, insert: field.get_db_prep_save(field.pre_save(obj, add=True), insert.connection)


@dataclass(frozen=True)
class InsertStatement:
    """How to INSERT rows of one model: each column's value getter and the SQL to use."""

    getters: list[ValueGetter]
    into: str  # INSERT INTO t (columns)
    row: str  # one row's placeholders
    arrays: str  # PostgreSQL: one binary array parameter per column, for UNNEST
    typed: str  # PostgreSQL: one row's placeholders, each cast to its column's type

    @property
    def head(self) -> str:
        """The start of a multi-row ``VALUES`` insert."""
        return f"{self.into} VALUES "


@cache
def insert_statement(model: type[Model], vendor: str) -> InsertStatement:
    """The INSERT of a model's rows, cached per model and database vendor.

    The getters take the calling thread's connection, since Django's connections belong to
    the thread that opened them.
    """
    connection = connections[DEFAULT_DB_ALIAS]
    quote = connection.ops.quote_name
    fields = [field for field in model._meta.concrete_fields if not field.primary_key and field.column]
    columns = ", ".join(quote(str(field.column)) for field in fields)
    into = f"INSERT INTO {quote(model._meta.db_table)} ({columns})"
    # PostgreSQL: one array per column, as Django's own bulk_create does there. The statement
    # has as many parameters as the model has columns however many rows go in, so the driver
    # parses it once instead of scanning thousands of placeholders every call. Binary
    # parameters (%b): see driver_cursor.
    postgresql = vendor == "postgresql"
    arrays = ", ".join(f"%b::{field.db_type(connection)}[]" for field in fields) if postgresql else ""
    typed = ", ".join(f"%s::{field.db_type(connection)}" for field in fields) if postgresql else ""
    getters = [_value_getter(field) for field in fields]
    return InsertStatement(getters, into, "(" + ", ".join(["%s"] * len(fields)) + ")", arrays, typed)


def keys_set(objs: Sequence[Model], returned: Sequence[tuple[Any, ...]]) -> None:
    """Give each inserted object the primary key the database returned for it, in insertion order."""
    for obj, (pk,) in zip(objs, returned, strict=True):
        obj.pk = pk
        obj._state.adding = False
        obj._state.db = DEFAULT_DB_ALIAS
