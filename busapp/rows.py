"""The statements every publish runs, without the ORM: INSERTs of events and audit entries, on the driver's cursor.

On the publish hot path ``Model.save()`` and ``bulk_create()`` cost more per row than the
database does (measured in ``bench/publish.py``). This writes the same rows with one
prepared statement per model. Values come out as the ORM would write them: JSON and
other fields through the field's own ``get_db_prep_save``, datetimes through the
connection's adapter (once per distinct value: a batch shares them), foreign keys as
their ids. Every ``auto_now``/``auto_now_add`` field of one call gets the same instant.
Only for models whose primary key is an auto-increment ``id``.

``driver_cursor`` runs such statements on the database driver's own cursor: Django's cursor
wrapper cost 10 to 25 us a statement, more than SQLite took to run a lookup by key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model
from django.utils import timezone

# SQLite allows 32,766 bound values per statement; stay well under it on every database.
_MAX_VALUES_PER_STATEMENT = 30_000
# Values of these fields go to the driver as they are (str, int, bool, a foreign key's id).
_PASSED_AS_IS = (models.CharField, models.TextField, models.IntegerField, models.BooleanField, models.ForeignKey)


class DriverCursor:
    """A driver cursor that takes Django's ``%s`` placeholders; the few statements every publish runs go through it."""

    def __init__(self, cursor: Any, vendor: str) -> None:
        self.cursor = cursor
        self.qmark = vendor == "sqlite"  # sqlite3 takes ``?``; psycopg takes ``%s`` as Django writes them

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement."""
        self.cursor.execute(_qmark(sql) if self.qmark else sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each row of parameters."""
        self.cursor.executemany(_qmark(sql) if self.qmark else sql, rows)

    def fetchone(self) -> Any:
        """The next row of the last query, or None."""
        return self.cursor.fetchone()

    def fetchall(self) -> list[Any]:
        """Every remaining row of the last query."""
        return list(self.cursor.fetchall())

    @property
    def rowcount(self) -> int:
        """How many rows the last statement changed."""
        return int(self.cursor.rowcount)


def _qmark(sql: str) -> str:
    """A statement with Django's ``%s`` placeholders in sqlite3's ``?`` style (our statements hold no other ``%``).

    Not cached: a batch's statement is new for each batch size (up to 60 KB), and rewriting it
    costs 0.3 us an event, where a cache of them would hold megabytes per process.
    """
    return sql.replace("%s", "?")


@contextmanager
def driver_cursor(*, binary: bool = False) -> Iterator[DriverCursor]:
    """The database driver's cursor on this thread's Django connection, for the statements every publish runs.

    It joins the connection's transaction like any other statement, and the driver's errors
    arrive as Django's (an ``IntegrityError`` is ``django.db.IntegrityError``). While queries
    are logged (``DEBUG``, or a test counting them) it is Django's own cursor, so they are seen.

    ``binary``: on PostgreSQL, a cursor that sends its parameters apart from the statement, so
    that ``%b`` ones travel in binary. Django's cursor writes every value into the SQL as a
    literal: a 1,000-event batch's arrays of envelopes were quoted in Python, character by
    character (24 us an envelope, 1.2 in binary: bench/README.md, api.py).
    """
    connection = connections[DEFAULT_DB_ALIAS]
    if connection.queries_logged:
        with connection.cursor() as cursor:
            yield DriverCursor(cursor, "django")
        return
    if connection.connection is None:
        connection.ensure_connection()
    with connection.wrap_database_errors:
        binding = binary and connection.vendor == "postgresql"
        raw: Any = _binding_cursor(connection) if binding else connection.connection.cursor()
        try:
            yield DriverCursor(raw, connection.vendor)
        finally:
            raw.close()


def _binding_cursor(connection: BaseDatabaseWrapper) -> Any:
    """A psycopg cursor on the connection that binds parameters on the server (Django's binds them in the SQL)."""
    import psycopg

    return psycopg.Cursor(connection.connection)


class _Insert:
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


def datetime_for_db(connection: BaseDatabaseWrapper, value: dt.datetime) -> Any:
    """A datetime as the connection's driver takes it, as Django's adapter gives it.

    On SQLite a time already in UTC (every ``timezone.now()``) is written directly; Django's
    adapter converts it to UTC again first, about 3 us a value, five values a single publish.
    """
    if value.tzinfo is dt.UTC and connection.vendor == "sqlite" and connection.timezone is dt.UTC:
        return str(value.replace(tzinfo=None))
    return connection.ops.adapt_datetimefield_value(value)


# Reads one column's value off an object, adapted for the insert it is part of.
ValueGetter = Callable[[Model, _Insert], Any]


def _value_getter(field: Field[Any, Any]) -> ValueGetter:
    """How to read one field's database value off an object."""
    attname = field.attname
    if isinstance(field, _PASSED_AS_IS):
        return lambda obj, insert: getattr(obj, attname)
    if isinstance(field, models.DateTimeField):
        if field.auto_now or field.auto_now_add:

            def stamped(obj: Model, insert: _Insert) -> Any:
                setattr(obj, attname, insert.now)
                return insert.datetime(insert.now)

            return stamped
        return lambda obj, insert: insert.datetime(getattr(obj, attname))
    return lambda obj, insert: field.get_db_prep_save(field.pre_save(obj, add=True), insert.connection)


@dataclass(frozen=True)
class _Statement:
    """How to INSERT rows of one model: each column's value getter and the SQL to use."""

    getters: list[ValueGetter]
    head: str  # INSERT INTO t (columns) VALUES
    row: str  # one row's placeholders
    unnest: str | None  # PostgreSQL: the same INSERT taking one array per column


@cache
def _statement(model: type[Model], vendor: str) -> _Statement:
    """The INSERT of a model's rows, cached per model and database vendor.

    The getters take the calling thread's connection, since Django's connections belong to
    the thread that opened them.
    """
    connection = connections[DEFAULT_DB_ALIAS]
    quote = connection.ops.quote_name
    fields = [field for field in model._meta.concrete_fields if not field.primary_key and field.column]
    columns = ", ".join(quote(str(field.column)) for field in fields)
    into = f"INSERT INTO {quote(model._meta.db_table)} ({columns})"
    unnest = None
    if vendor == "postgresql":
        # One array per column, as Django's own bulk_create does on PostgreSQL: the statement
        # has as many parameters as the model has columns however many rows go in, so the
        # driver parses it once instead of scanning thousands of placeholders every call.
        # Binary parameters (%b): see driver_cursor.
        arrays = ", ".join(f"%b::{field.db_type(connection)}[]" for field in fields)
        unnest = f"{into} SELECT * FROM UNNEST({arrays}) RETURNING id"  # noqa: S608 (names and types from the model)
    getters = [_value_getter(field) for field in fields]
    return _Statement(getters, f"{into} VALUES ", "(" + ", ".join(["%s"] * len(fields)) + ")", unnest)


def rows_insert(objs: Sequence[Model]) -> None:
    """INSERT new objects of one model, in as few statements as the database allows, and set their primary keys."""
    if not objs:
        return
    connection = connections[DEFAULT_DB_ALIAS]
    statement = _statement(type(objs[0]), connection.vendor)
    getters, insert = statement.getters, _Insert(connection)
    unnest = statement.unnest if len(objs) > 1 else None
    with driver_cursor(binary=unnest is not None) as cursor:
        if unnest is not None:
            rows = [[getter(obj, insert) for getter in getters] for obj in objs]
            cursor.execute(unnest, [list(column) for column in zip(*rows, strict=True)])
            _keys_set(objs, cursor.fetchall())
            return
        per_statement = max(1, _MAX_VALUES_PER_STATEMENT // len(getters))
        for start in range(0, len(objs), per_statement):
            chunk = objs[start : start + per_statement]
            params = [getter(obj, insert) for obj in chunk for getter in getters]
            cursor.execute(statement.head + ", ".join([statement.row] * len(chunk)) + " RETURNING id", params)
            _keys_set(chunk, cursor.fetchall())


def _keys_set(objs: Sequence[Model], returned: Sequence[tuple[Any, ...]]) -> None:
    """Give each inserted object the primary key the database returned for it, in insertion order."""
    for obj, (pk,) in zip(objs, returned, strict=True):
        obj.pk = pk
        obj._state.adding = False
        obj._state.db = DEFAULT_DB_ALIAS


def database_write_check(model: type[Model], *, wait_seconds: float = 1.0) -> None:
    """Raise ``DatabaseError`` unless the database would take a write to the model's table now; writes nothing.

    SQLite: its write lock is taken (BEGIN IMMEDIATE, after this process's own writers) and
    given back. PostgreSQL: the lock every INSERT takes on the events table is taken, waiting at
    most ``wait_seconds`` (a ``LOCK TABLE`` someone holds, a stuck writer), on a server that is
    not a read-only replica, and rolled back.
    """
    connection = connections[DEFAULT_DB_ALIAS]
    if connection.vendor == "sqlite":
        connection.ensure_connection()
        # This connection only (the check's thread closes it after): wait for the lock this long, not
        # 30 s, both for this process's turn (hmsadmin.sqlite) and for SQLite's own lock.
        connection.writer_wait_seconds = wait_seconds  # type: ignore[attr-defined]
        connection.connection.execute(f"PRAGMA busy_timeout = {round(wait_seconds * 1000)}")
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            wait = f"{round(wait_seconds * 1000)}ms"
            cursor.execute(
                "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)", [wait, wait]
            )
            cursor.execute("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')")
            in_recovery, read_only = cursor.fetchone()
            if in_recovery or read_only == "on":
                raise DatabaseError("the database is read-only (a replica, or default_transaction_read_only)")
            cursor.execute(f"LOCK TABLE {model._meta.db_table} IN ROW EXCLUSIVE MODE")
        transaction.set_rollback(True)
