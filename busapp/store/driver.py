"""The database driver's own cursor on Django's connection, for the statements every publish runs.

Django's cursor wrapper cost 10 to 25 us a statement (the ``%s`` to ``?`` rewrite by regular
expression, async-safety checks, the debug switch), more than SQLite took to run a lookup by
key (bench/README.md). This is the one module that reaches past Django's public API to the
driver: ``connection.connection`` and ``wrap_database_errors``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.utils import load_backend


class DriverCursor:
    """A driver cursor that takes Django's ``%s`` placeholders; the few statements every publish runs go through it."""

    def __init__(self, cursor: Any, vendor: str) -> None:
        self.cursor = cursor
        self.qmark = vendor == "sqlite"  # sqlite3 takes ``?``; psycopg takes ``%s`` as Django writes them
        self.prepares = vendor == "postgresql"

    def execute(self, sql: str, params: Sequence[Any] = (), *, prepare: bool = False) -> None:
        """Run one statement; ``prepare``: on PostgreSQL, as a statement the server plans once per connection.

        Django turns psycopg's automatic preparation off (``prepare_threshold=None``), so every
        statement was planned anew: 0.27 ms for the publish's write, several times its run.
        Only fixed statements are prepared, not those whose text varies with their rows.
        """
        if self.qmark:
            self.cursor.execute(_qmark(sql), params)
        elif prepare and self.prepares:
            self.cursor.execute(sql, params, prepare=True)
        else:
            self.cursor.execute(sql, params)

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
def driver_cursor() -> Iterator[DriverCursor]:
    """The database driver's cursor on this thread's Django connection, for the statements every publish runs.

    It joins the connection's transaction like any other statement, and the driver's errors
    arrive as Django's (an ``IntegrityError`` is ``django.db.IntegrityError``). While queries
    are logged (``DEBUG``, or a test counting them) it is Django's own cursor, so they are seen.

    On PostgreSQL it sends its parameters apart from the statement (server-side binding), so
    that ``%b`` ones travel in binary and statements can be prepared. Django's cursor writes
    every value into the SQL as a literal: a 1,000-event batch's arrays of envelopes were
    quoted in Python, character by character (24 us an envelope, 1.2 in binary:
    bench/README.md, api.py).
    """
    connection = connections[DEFAULT_DB_ALIAS]
    if connection.queries_logged:
        with connection.cursor() as cursor:
            yield DriverCursor(cursor, "django")
        return
    if connection.connection is None:
        connection.ensure_connection()
    with connection.wrap_database_errors:
        binding = connection.vendor == "postgresql"
        raw: Any = _binding_cursor(connection) if binding else connection.connection.cursor()
        try:
            yield DriverCursor(raw, connection.vendor)
        finally:
            raw.close()


def _binding_cursor(connection: BaseDatabaseWrapper) -> Any:
    """A psycopg cursor on the connection that binds parameters on the server (Django's binds them in the SQL)."""
    import psycopg

    return psycopg.Cursor(connection.connection)


def datetime_for_db(connection: BaseDatabaseWrapper, value: dt.datetime) -> Any:
    """A datetime as the connection's driver takes it, as Django's adapter gives it.

    On SQLite a time already in UTC (every ``timezone.now()``) is written directly; Django's
    adapter converts it to UTC again first, about 3 us a value, five values a single publish.
    """
    if value.tzinfo is dt.UTC and connection.vendor == "sqlite" and connection.timezone is dt.UTC:
        return str(value.replace(tzinfo=None))
    return connection.ops.adapt_datetimefield_value(value)


# The parent's connections, held by a forked process so that no finalizer closes them there.
_inherited_connections: list[Any] = []


@contextmanager
def connection_own_after_fork(settings_dict: dict[str, Any]) -> Iterator[None]:
    """In a forked process: the default connection replaced by a new one of its own, closed at the end.

    The parent's connection came along with the fork. It is kept referenced and untouched:
    closing it (or a finalizer doing so) would end the session the parent still uses. The
    forked process exits without running finalizers.
    """
    _inherited_connections.append(connections[DEFAULT_DB_ALIAS])
    connections[DEFAULT_DB_ALIAS] = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict)
    try:
        yield
    finally:
        connections[DEFAULT_DB_ALIAS].close()
