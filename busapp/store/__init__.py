"""Every raw SQL statement and vendor branch of the app, behind one small interface (``Store``).

The rest of busapp is plain Django. ``store()`` gives the implementation for the default
database: ``postgresql.PostgresStore`` or ``sqlite.SqliteStore``, raw SQL measured on its
database (bench/README.md), or ``orm.OrmStore``, plain Django, when ``BUS_STORE=orm``. The
ORM store is the oracle: tests/test_store.py runs the same operations on both and compares
what they leave behind. Private Django and driver APIs are used here and nowhere else
(``driver.py``, ``instances.py``, ``encoding.py``).
"""

from __future__ import annotations

from functools import cache

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

from busapp.store.base import (
    BATCH_VOUCHING_ACTIONS,
    VOUCHING_ACTIONS,
    ActiveVersionRow,
    ChainRow,
    RecordedEvent,
    Store,
)
from busapp.store.orm import OrmStore
from busapp.store.postgresql import PostgresStore
from busapp.store.sqlite import SqliteStore

__all__ = [
    "BATCH_VOUCHING_ACTIONS",
    "VOUCHING_ACTIONS",
    "ActiveVersionRow",
    "ChainRow",
    "RecordedEvent",
    "Store",
    "store",
]


def store() -> Store:
    """The store for the default database, as ``BUS_STORE`` chooses (``sql``, the default, or ``orm``)."""
    return _store(connections[DEFAULT_DB_ALIAS].vendor, settings.BUS_STORE)


@cache
def _store(vendor: str, kind: str) -> Store:
    """One store per database vendor and kind; the ORM's for a database without raw SQL of its own."""
    if kind == "orm":
        return OrmStore()
    if vendor == "postgresql":
        return PostgresStore()
    if vendor == "sqlite":
        return SqliteStore()
    return OrmStore()
