"""Plain INSERT statements for the rows every publish writes: events and audit entries.

On the publish hot path ``Model.save()`` and ``bulk_create()`` cost more per row than the
database does (measured in ``bench/publish.py``). This writes the same rows with one
prepared statement per model, adapting each value with its field's own
``get_db_prep_save``, so JSON, time zones and foreign keys come out exactly as the ORM
would write them. Only for models whose primary key is an auto-increment ``id``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model

# SQLite allows 32,766 bound values per statement; stay well under it on every database.
_MAX_VALUES_PER_STATEMENT = 30_000
# Values of these fields go to the driver as they are (str, int, bool, a foreign key's id);
# the others (datetimes, JSON) are adapted by the field, as the ORM does.
_PASSED_AS_IS = (models.CharField, models.TextField, models.IntegerField, models.BooleanField, models.ForeignKey)

ValueGetter = Callable[[Model], Any]


def _value_getter(field: Field[Any, Any], connection: BaseDatabaseWrapper) -> ValueGetter:
    """How to read one field's database value off an object."""
    if isinstance(field, _PASSED_AS_IS):
        return operator.attrgetter(field.attname)
    return lambda obj: field.get_db_prep_save(field.pre_save(obj, add=True), connection)


@cache
def _insert_parts(model: type[Model], alias: str) -> tuple[list[ValueGetter], str, str]:
    """Each column's value getter, the ``INSERT INTO t (cols) VALUES`` head and one row's placeholders."""
    connection = connections[alias]
    quote = connection.ops.quote_name
    fields = [field for field in model._meta.concrete_fields if not field.primary_key and field.column]
    columns = ", ".join(quote(str(field.column)) for field in fields)
    head = f"INSERT INTO {quote(model._meta.db_table)} ({columns}) VALUES "  # noqa: S608 (names from the model)
    getters = [_value_getter(field, connection) for field in fields]
    return getters, head, "(" + ", ".join(["%s"] * len(fields)) + ")"


def rows_insert(objs: Sequence[Model]) -> None:
    """INSERT new objects of one model, a chunk per statement, and set their primary keys."""
    if not objs:
        return
    getters, head, placeholders = _insert_parts(type(objs[0]), DEFAULT_DB_ALIAS)
    per_statement = max(1, _MAX_VALUES_PER_STATEMENT // len(getters))
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        for start in range(0, len(objs), per_statement):
            chunk = objs[start : start + per_statement]
            params = [getter(obj) for obj in chunk for getter in getters]
            cursor.execute(head + ", ".join([placeholders] * len(chunk)) + " RETURNING id", params)
            for obj, (pk,) in zip(chunk, cursor.fetchall(), strict=True):
                obj.pk = pk
                obj._state.adding = False
                obj._state.db = DEFAULT_DB_ALIAS
