"""The dry run's checker answers as the publish path's validator does, with Rust where it may and Python where not."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from referencing import Registry

from busapp.validation import DraftChecker, payload_json

SCHEMA = {
    "type": "object",
    "required": ["code", "amount"],
    "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
        "digits": {"type": "string", "pattern": "^\\d+$"},  # RE2's \\d is ASCII only; Rust's regex is Unicode
        "amount": {"type": "number", "multipleOf": 0.01, "minimum": 0},
        "day": {"type": "string", "format": "date"},
        "tags": {"type": "array", "uniqueItems": True, "items": {"type": ["string", "number", "boolean"]}},
        "flag": {"const": True},
        "big": {"type": "integer", "maximum": 9007199254740993},
    },
}
VALUES: dict[str, list[Any]] = {
    "code": ["AB-123", "ab-123", "AB-1234", 7],
    "digits": ["123", "١٢٣", ""],
    "amount": [1234.56, 0.1 + 0.2, 10, -0.01, True],
    "day": ["2026-12-06", "2026-02-30", "06/12/2026"],
    "tags": [["a", "b"], ["a", "a"], [1, True], [1, 1.0], []],
    "flag": [True, 1, 1.0],
    "big": [9007199254740993, 9007199254740995, 12],
}


def _payloads() -> list[dict[str, Any]]:
    """Each value of each field once, around a valid payload; and a few payloads of every field at once."""
    valid = {"code": "AB-123", "amount": 10}
    found = [valid]
    for name, values in VALUES.items():
        found += [{**valid, name: value} for value in values]
    names = list(VALUES)
    for combination in itertools.islice(itertools.product(*(VALUES[name] for name in names)), 0, 2000, 37):
        found.append(dict(zip(names, combination, strict=True)))
    return found


@pytest.fixture(scope="module")
def checker() -> DraftChecker:
    made = DraftChecker(SCHEMA, stored=Registry(), number=2)
    assert made.rust is not None, "this schema is one the exact Rust checker takes"
    return made


@pytest.mark.parametrize("payload", _payloads(), ids=lambda payload: payload_json(payload)[:60])
def test_the_rust_answer_is_the_python_validators_answer(checker: DraftChecker, payload: dict[str, Any]) -> None:
    assert checker.accepts(payload, payload_json(payload)) is (checker.errors(payload) == [])


def test_a_schema_with_a_reference_is_checked_in_python_alone() -> None:
    schema = {"$defs": {"code": {"type": "string"}}, "properties": {"code": {"$ref": "#/$defs/code"}}}

    made = DraftChecker(schema, stored=Registry(), number=2)

    assert made.rust is None
    assert made.accepts({"code": 5}, '{"code": 5}') is False
    assert made.errors({"code": 5})[0]["path"] == "/payload/code"
