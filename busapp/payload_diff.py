"""What a publish would change: a payload against the one in force, field by field.

An approver judges the change, not the whole document: each field (nested ones by their dotted
path, list items by position) is added, removed, changed or the same, with both values as JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

ADDED, REMOVED, CHANGED, SAME = "added", "removed", "changed", "same"


@dataclass(frozen=True)
class DiffRow:
    """One field: where it is, its value in force and the value asked for (JSON text; None where absent)."""

    path: str
    before: str | None
    after: str | None

    @property
    def change(self) -> str:
        """Added, removed, changed or the same."""
        if self.before is None:
            return ADDED
        if self.after is None:
            return REMOVED
        return SAME if self.before == self.after else CHANGED


def payload_diff(before: Any, after: Any) -> list[DiffRow]:
    """Every field of either payload, in path order, with its value in each."""
    old, new = _flattened(before), _flattened(after)
    return [DiffRow(path, old.get(path), new.get(path)) for path in sorted(old.keys() | new.keys())]


def _flattened(value: Any, prefix: str = "") -> dict[str, str]:
    """Each scalar (and each empty object or list) by its dotted path, as JSON text."""
    if isinstance(value, dict) and value:
        items: list[tuple[str, Any]] = list(value.items())
    elif isinstance(value, list) and value:
        items = [(str(position), item) for position, item in enumerate(value)]
    else:
        return {prefix or "(the payload)": json.dumps(value, ensure_ascii=False, sort_keys=True)}
    flat: dict[str, str] = {}
    for key, item in items:
        flat.update(_flattened(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat
