"""The payload fields a set of schemas describes, as history conditions name them (``taxpayer.state``).

History conditions are checked against them: a field no payload can carry (below a closed object,
under a number, ``payload.x`` for ``x``) is refused with the fields there are, instead of matching
nothing; a field the schemas do not declare but allow (an open object) is let through with a
word on the page; the history page offers the declared fields in its field picker. Array
positions are any position (``brackets.*.rate``); below a part a schema leaves open
(``patternProperties``, a ``$ref``, no type at all) every path is taken.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# Subschemas whose properties are the object's own, merged into one view of it.
_COMBINED = ("allOf", "anyOf", "oneOf", "then", "else")
# A schema nested deeper than this is taken as open below: no payload field is that deep in practice.
_DEPTH_WALKED = 32


@dataclass
class PayloadFields:
    """Declared field paths (segments, ``*`` for an array position), open objects, and parts where anything goes."""

    paths: set[tuple[str, ...]] = field(default_factory=set)
    open_objects: set[tuple[str, ...]] = field(default_factory=set)  # objects that allow undeclared properties
    open_below: set[tuple[str, ...]] = field(default_factory=set)

    def add_schema(self, schema: Any) -> None:
        """Take in one schema's fields."""
        self._walk(schema, (), 0)

    def declares(self, path: Iterable[str]) -> bool:
        """Whether some schema declares the field (or leaves the part it is in open to anything)."""
        segments = _segments(path)
        return segments in self.paths or self._under_open(segments)

    def may_hold(self, path: Iterable[str]) -> bool:
        """Whether some payload valid under some schema could carry the field: declared, or in an open object."""
        segments = _segments(path)
        if segments in self.paths or self._under_open(segments):
            return True
        first_undeclared = next(i for i in range(len(segments)) if segments[: i + 1] not in self.paths)
        return segments[:first_undeclared] in self.open_objects

    def _under_open(self, segments: tuple[str, ...]) -> bool:
        """Whether the path lies below a part where anything goes."""
        return any(segments[: len(prefix)] == prefix for prefix in self.open_below)

    def listed(self) -> list[str]:
        """Every field path as a condition writes it, array positions as 0, in order."""
        return sorted(".".join("0" if part == "*" else part for part in path) for path in self.paths)

    def _walk(self, schema: Any, at: tuple[str, ...], depth: int, *, shapes_object: bool = True) -> None:
        """The fields of the schema at ``at`` (``shapes_object`` False: a branch; its parent says if it is closed)."""
        if schema is True or schema == {}:
            self.open_below.add(at)
        if not isinstance(schema, dict):
            return
        if depth > _DEPTH_WALKED or "$ref" in schema or "$dynamicRef" in schema or "patternProperties" in schema:
            self.open_below.add(at)
            return
        if shapes_object:
            self._note_openness(schema, at)
        for name, child in (schema.get("properties") or {}).items():
            self._walk_child(child, (*at, name), depth)
        for key in ("items", "contains"):
            if isinstance(schema.get(key), dict):
                self._walk_child(schema[key], (*at, "*"), depth)
        for child in schema.get("prefixItems") or []:
            self._walk_child(child, (*at, "*"), depth)
        self._walk_branches(schema, at, depth)

    def _walk_branches(self, schema: dict[str, Any], at: tuple[str, ...], depth: int) -> None:
        """The fields of ``allOf``, ``anyOf``, ``oneOf``, ``then`` and ``else``: the same object's."""
        parent_decides = "properties" in schema or "additionalProperties" in schema
        for key in _COMBINED:
            children = schema.get(key)
            for child in children if isinstance(children, list) else [children]:
                self._walk(child, at, depth + 1, shapes_object=not parent_decides)

    def _walk_child(self, schema: Any, at: tuple[str, ...], depth: int) -> None:
        """A declared field (a property or an array's items) and what is inside it."""
        self.paths.add(at)
        self._walk(schema, at, depth + 1)

    def _note_openness(self, schema: dict[str, Any], at: tuple[str, ...]) -> None:
        """Whether the object at ``at`` takes undeclared properties, and of what kind."""
        if isinstance(schema.get("additionalProperties"), dict) and schema["additionalProperties"]:
            self.open_below.add(at)
        closed = schema.get("additionalProperties") is False or schema.get("unevaluatedProperties") is False
        if not closed and (schema.get("type") == "object" or "properties" in schema):
            self.open_objects.add(at)


def _segments(path: Iterable[str]) -> tuple[str, ...]:
    """A condition's path with array positions as ``*``."""
    return tuple("*" if part.isdigit() else part for part in path)


def payload_fields(schemas: Iterable[Any]) -> PayloadFields:
    """The fields of every one of ``schemas``."""
    fields = PayloadFields()
    for schema in schemas:
        fields.add_schema(schema)
    return fields
