"""A quick yes for valid payloads: jsonschema-rs, on schemas made only of keywords it reads as we do.

``validation.payload_schema_errors`` asks this first. When it says a payload is valid, that
is the answer; otherwise (invalid, or a schema or payload it does not take) the Python
validator checks the payload and writes every error, with its path and wording. So
jsonschema-rs only ever shortens the way to "no errors", and only where it cannot differ:

- schemas of the plain keywords below and annotations, Draft 2020-12, nothing else: no
  ``pattern`` (ours is RE2), no ``format``, no ``multipleOf`` (ours is decimal), no
  ``uniqueItems``, no ``$ref`` (ours resolve in the registry), no ``unevaluated*``;
- payloads whose JSON holds no run of 16 digits: every integer below 2**53, where a
  float and an integer compare the same in Rust and in Python.

A plain schema has no references, so its check takes at most (its subschemas x the payload's
values) steps: no allowance is needed here, where the Python validator counts its evaluations.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema_rs

_DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
# Assertions both libraries implement as the specification says, and annotations neither asserts.
_PLAIN = frozenset(
    {
        "type",
        "enum",
        "const",
        "required",
        "dependentRequired",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minContains",
        "maxContains",
        "minProperties",
        "maxProperties",
        "$schema",
        "$comment",
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)
# Keywords holding one subschema, a list of them, or subschemas by name.
_ONE = frozenset({"additionalProperties", "items", "contains", "not", "if", "then", "else", "propertyNames"})
_LIST = frozenset({"prefixItems", "allOf", "anyOf", "oneOf"})
_NAMED = frozenset({"properties", "dependentSchemas", "$defs"})
# A run of 16 digits: an integer that may not survive the trip to a float (or a long number in a string).
_LONG_DIGITS = re.compile(r"[0-9]{16}")

_checkers: dict[tuple[int, str], Any] = {}
_checkers_lock = threading.Lock()


def fast_checker(key: tuple[int, str], schema: Any) -> Any:
    """The jsonschema-rs validator of a schema version, or None when the schema uses a keyword outside the plain set."""
    checker = _checkers.get(key, False)
    if checker is False:
        with _checkers_lock:
            checker = _checkers.get(key, False)
            if checker is False:
                checker = _checkers[key] = _checker_new(schema)
    return checker


def _checker_new(schema: Any) -> Any:
    """A jsonschema-rs Draft 2020-12 validator for a plain schema; None for any other schema."""
    if not isinstance(schema, dict) or schema.get("$schema", _DRAFT_2020_12) != _DRAFT_2020_12:
        return None
    if not all(_plain(node) for node in _subschemas(schema)):
        return None
    try:
        return jsonschema_rs.Draft202012Validator(schema, validate_formats=False)
    except Exception:  # anything it will not compile, the Python validator checks
        return None


def _plain(node: Any, also: frozenset[str] = frozenset()) -> bool:
    """Whether one (sub)schema uses only plain keywords (and ``also``) or ``x-`` extensions."""
    if isinstance(node, bool):
        return True
    if not isinstance(node, dict):
        return False
    return all(
        name in _PLAIN or name in _ONE or name in _LIST or name in _NAMED or name in also or name.startswith("x-")
        for name in node
    )


def _subschemas(schema: Any) -> Iterator[Any]:
    """Every (sub)schema of a schema, itself first; without recursion, so any depth is walked."""
    stack = [schema]
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, dict):
            continue
        for name, value in node.items():
            if name in _ONE:
                stack.append(value)
            elif name in _LIST and isinstance(value, list):
                stack.extend(value)
            elif name in _NAMED and isinstance(value, dict):
                stack.extend(value.values())
            elif name in _LIST or name in _NAMED:
                yield value  # not the shape the keyword takes: _plain refuses it


# Keywords jsonschema-rs reads differently from us, which an exact checker takes as ours (``keywords``).
_OURS = frozenset({"pattern", "multipleOf", "uniqueItems", "format"})


def exact_checker(schema: Any, *, keywords: dict[str, type], format_of: Callable[[str], Callable[[str], bool]]) -> Any:
    """A jsonschema-rs validator whose yes and no are ours, or None: plain keywords, ours called back from Rust.

    ``keywords`` are our ``pattern``, ``multipleOf`` and ``uniqueItems`` as jsonschema-rs custom
    keywords; ``format_of(name)`` our check of a format. Used where many payloads meet one schema
    not saved yet (a dry run); its numbers are trusted only as ``surely_valid`` trusts them.
    """
    if not isinstance(schema, dict) or schema.get("$schema", _DRAFT_2020_12) != _DRAFT_2020_12:
        return None
    nodes = list(_subschemas(schema))
    if not all(_plain(node, also=_OURS) for node in nodes):
        return None
    formats = {node["format"] for node in nodes if isinstance(node, dict) and isinstance(node.get("format"), str)}
    try:
        return jsonschema_rs.Draft202012Validator(
            schema,
            validate_formats=True,
            formats={name: format_of(name) for name in formats},
            keywords={name: keyword for name, keyword in keywords.items() if name in _OURS},
        )
    except Exception:  # anything it will not compile, the Python validator checks
        return None


def exact_answer(checker: Any, payload: Any, encoded: str) -> bool | None:
    """An exact checker's yes or no, or None where Python must decide (long numbers, a value Rust cannot take)."""
    if checker is None or _LONG_DIGITS.search(encoded) is not None:
        return None
    try:
        return bool(checker.is_valid(payload))
    except Exception:  # a value it cannot take: the Python validator decides
        return None


def surely_valid(checker: Any, payload: Any, encoded: str) -> bool:
    """True only when jsonschema-rs finds the payload valid and its numbers are ones both libraries read alike."""
    if checker is None or _LONG_DIGITS.search(encoded) is not None:
        return False
    try:
        return bool(checker.is_valid(payload))
    except Exception:  # a value it cannot take: the Python validator decides
        return False


def fast_checkers_clear() -> None:
    """Forget the validators (tests that recreate the database use it)."""
    with _checkers_lock:
        _checkers.clear()
