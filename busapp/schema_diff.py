"""Two versions of a JSON Schema side by side, keyword by keyword, each change marked with whom it breaks.

Subschemas are walked (``properties``, ``items``, ``allOf``...), so a change shows at the JSON
pointer of the keyword that changed, not as one changed document. A row breaks writers when
the compatibility checker finds events valid under the old version that the new one refuses
at or under that pointer, and readers when it is the other way round.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from busapp.compatibility import Finding
from busapp.payload_diff import DiffRow

# Keywords whose value is one subschema, a map of names to subschemas, or a list of subschemas.
_ONE_SCHEMA = {
    "additionalProperties",
    "contains",
    "else",
    "if",
    "items",
    "not",
    "propertyNames",
    "then",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contentSchema",
}
_SCHEMA_MAPS = {"$defs", "definitions", "dependentSchemas", "patternProperties", "properties"}
_SCHEMA_LISTS = {"allOf", "anyOf", "oneOf", "prefixItems"}

WRITERS, READERS, BOTH, NOBODY = "writers", "readers", "writers and readers", ""


@dataclass(frozen=True)
class SchemaDiffRow(DiffRow):
    """One keyword that differs: its JSON pointer (``path``), its JSON text before and after, and whom it breaks."""

    breaks: str = NOBODY


def schema_diff(
    before: Any, after: Any, *, writers: Iterable[Finding] = (), readers: Iterable[Finding] = ()
) -> list[SchemaDiffRow]:
    """Every keyword added, removed or changed from ``before`` to ``after``, marked by the findings that touch it."""
    writer_pointers = [finding.pointer for finding in writers]
    reader_pointers = [finding.pointer for finding in readers]
    rows = []
    for pointer, old, new in _differences(before, after, ""):
        hits = (_touches(pointer, writer_pointers), _touches(pointer, reader_pointers))
        breaks = {(True, True): BOTH, (True, False): WRITERS, (False, True): READERS}.get(hits, NOBODY)
        rows.append(SchemaDiffRow(pointer, old, new, breaks))
    return rows


def _differences(old: Any, new: Any, pointer: str) -> list[tuple[str, str | None, str | None]]:
    """(pointer, before, after) for each differing keyword of two subschemas, in pointer order."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [(pointer or "/", _text(old), _text(new))]
    found: list[tuple[str, str | None, str | None]] = []
    for key in sorted(old.keys() | new.keys()):
        where = f"{pointer}/{_escaped(key)}"
        if key not in new:
            found.append((where, _text(old[key]), None))
        elif key not in old:
            found.append((where, None, _text(new[key])))
        elif key in _ONE_SCHEMA:
            found += _differences(old[key], new[key], where)
        elif key in _SCHEMA_MAPS and isinstance(old[key], dict) and isinstance(new[key], dict):
            found += _map_differences(old[key], new[key], where)
        elif key in _SCHEMA_LISTS and isinstance(old[key], list) and isinstance(new[key], list):
            found += _list_differences(old[key], new[key], where)
        elif old[key] != new[key]:
            found.append((where, _text(old[key]), _text(new[key])))
    return found


def _map_differences(
    old: dict[str, Any], new: dict[str, Any], pointer: str
) -> list[tuple[str, str | None, str | None]]:
    """Named subschemas (properties, $defs ...): each added, removed, or compared keyword by keyword."""
    found: list[tuple[str, str | None, str | None]] = []
    for name in sorted(old.keys() | new.keys()):
        where = f"{pointer}/{_escaped(name)}"
        if name not in new:
            found.append((where, _text(old[name]), None))
        elif name not in old:
            found.append((where, None, _text(new[name])))
        else:
            found += _differences(old[name], new[name], where)
    return found


def _list_differences(old: list[Any], new: list[Any], pointer: str) -> list[tuple[str, str | None, str | None]]:
    """Subschemas by position (allOf, prefixItems ...)."""
    found: list[tuple[str, str | None, str | None]] = []
    for index in range(max(len(old), len(new))):
        where = f"{pointer}/{index}"
        if index >= len(new):
            found.append((where, _text(old[index]), None))
        elif index >= len(old):
            found.append((where, None, _text(new[index])))
        else:
            found += _differences(old[index], new[index], where)
    return found


def _touches(pointer: str, finding_pointers: list[str]) -> bool:
    """A finding touches a row at, above or below the row's pointer (``required`` and its properties alike)."""
    parent = pointer.rsplit("/", 1)[0]
    for found in finding_pointers:
        if found in (pointer, parent) or pointer.startswith(found + "/") or found.startswith(pointer + "/"):
            return True
    return False


def _escaped(key: str) -> str:
    """A JSON pointer token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _text(value: Any) -> str:
    """A value as compact JSON text."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
