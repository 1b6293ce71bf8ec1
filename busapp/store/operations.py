"""Migration operations for what Django's own cannot say: PostgreSQL's extended statistics.

PostgreSQL takes columns as independent when it estimates rows. An event's topic and event type
are not (the type implies the topic): planned as independent, a type within a topic is estimated
at a twentieth of its real size, and a page of its newest events reads and sorts the whole topic
instead of walking the (topic, timestamp, id) index (bench/README.md, history.py). Other databases
have no such statistics: the operation does nothing there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db.migrations.operations.base import Operation


class CreateStatistics(Operation):
    """``CREATE STATISTICS name (kinds) ON columns FROM table``, then ``ANALYZE table``, on PostgreSQL only."""

    reversible = True

    def __init__(self, name: str, model_name: str, fields: Sequence[str], kinds: Sequence[str]) -> None:
        self.name = name
        self.model_name = model_name
        self.fields = list(fields)
        self.kinds = list(kinds)

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        """How the migration file writes it."""
        kwargs = {"name": self.name, "model_name": self.model_name, "fields": self.fields, "kinds": self.kinds}
        return self.__class__.__qualname__, [], kwargs

    def state_forwards(self, app_label: str, state: Any) -> None:
        """Statistics are not part of Django's model state."""

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        """Create the statistics and gather them at once (``ANALYZE`` samples: seconds at any size)."""
        if schema_editor.connection.vendor != "postgresql":
            return
        model = to_state.apps.get_model(app_label, self.model_name)
        quote = schema_editor.quote_name
        columns = ", ".join(quote(model._meta.get_field(name).column) for name in self.fields)
        table = quote(model._meta.db_table)
        kinds = ", ".join(self.kinds)
        schema_editor.execute(f"CREATE STATISTICS IF NOT EXISTS {quote(self.name)} ({kinds}) ON {columns} FROM {table}")
        schema_editor.execute(f"ANALYZE {table}")

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        """Drop the statistics."""
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(f"DROP STATISTICS IF EXISTS {schema_editor.quote_name(self.name)}")

    def describe(self) -> str:
        """What ``migrate`` prints."""
        return f"Create statistics {self.name} on {self.model_name} ({', '.join(self.fields)})"
