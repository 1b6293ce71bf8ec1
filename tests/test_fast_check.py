"""jsonschema-rs says "valid" only where the Python validator, which writes the errors, says so too."""

import re

import pytest

from busapp.fast_check import _checker_new, surely_valid
from busapp.validation import PayloadValidator, payload_json

EMOJI = "\U0001f600"
# Plain schemas (only keywords both libraries read alike), each with payloads on both sides of its rules.
PLAIN = [
    (
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "x-hms-topic": "tax-policy",
            "title": "Tax policy updated",
            "type": "object",
            "required": ["standard_deduction"],
            "properties": {"standard_deduction": {"type": "number", "minimum": 0, "description": "dollars"}},
        },
        [{"standard_deduction": 15000}, {"standard_deduction": -1}, {"standard_deduction": "15000"}, {}, {"x": 1}],
    ),
    ({"type": "integer"}, [1, 1.0, 1.5, True, "1", None, 2**52, -(2**52)]),
    ({"enum": [1, "a", None, [1, 2], {"a": 1}]}, [1.0, True, "a", [1, 2], [1.0, 2], {"a": 1.0}, {"a": True}, False]),
    ({"const": False}, [0, False, None, 0.0, []]),
    ({"minLength": 2, "maxLength": 3}, ["a", "ab", EMOJI * 2, EMOJI, "abcd", 5, "é" * 3]),
    (
        {
            "type": "object",
            "properties": {"a": {"type": "number", "exclusiveMaximum": 10}},
            "additionalProperties": False,
            "required": ["a"],
        },
        [{"a": 10}, {"a": 9.999}, {"a": 9, "b": 1}, {}, [], {"a": True}],
    ),
    (
        {
            "prefixItems": [{"type": "string"}],
            "items": {"type": "integer"},
            "minItems": 1,
            "maxItems": 3,
            "contains": {"const": 2},
            "minContains": 1,
            "maxContains": 1,
        },
        [["x", 2], ["x"], [1, 2], ["x", 2, 3, 4], ["x", 2.0], ["x", 2, 2], {"0": "x"}],
    ),
    ({"anyOf": [{"type": "string"}, {"minimum": 5}], "not": {"const": 7}}, ["s", 6, 7, 4, None, True, 7.0]),
    (
        {"if": {"properties": {"k": {"const": "a"}}}, "then": {"required": ["x"]}, "else": {"required": ["y"]}},
        [{"k": "a", "x": 1}, {"k": "a"}, {"y": 1}, {}, "not an object"],
    ),
    ({"oneOf": [{"type": "number"}, {"type": "integer"}]}, [1, 1.5, "x", 1.0]),
    (
        {
            "dependentRequired": {"a": ["b"]},
            "propertyNames": {"maxLength": 3},
            "minProperties": 1,
            "maxProperties": 2,
        },
        [{"a": 1}, {"a": 1, "b": 2}, {"abcd": 1}, {}, {"b": 1, "c": 2, "d": 3}],
    ),
    ({"type": "number", "minimum": 0.1}, [0.1, 0.09999999999999999, 1e-300, 0, 1, 0.10000000000000002]),
    ({"type": ["integer", "null"], "maximum": 900719925474099}, [900719925474099, 900719925474100, None, 1.5]),
    (
        {"$defs": {"x": {"type": "string"}}, "type": "object", "dependentSchemas": {"a": {"required": ["b"]}}},
        [{}, {"a": 1}, {"a": 1, "b": 1}],
    ),
    ({"properties": {"a": False, "b": True}, "$comment": "booleans"}, [{"a": 1}, {"b": 1}, {}]),
]
# Schemas the fast check leaves to the Python validator: keywords we read our own way, or references.
NOT_PLAIN = [
    {"pattern": "^a"},
    {"properties": {"a": {"pattern": "x"}}},
    {"patternProperties": {"^a": {}}},
    {"format": "email"},
    {"multipleOf": 0.1},
    {"uniqueItems": True},
    {"$ref": "#/$defs/x", "$defs": {"x": {}}},
    {"unevaluatedProperties": False},
    {"$schema": "http://json-schema.org/draft-07/schema#"},
    {"$id": "https://example.gov/x"},
    {"contentEncoding": "base64"},
    {"items": 5},
    {"allOf": {"type": "string"}},
    {"anyOf": [{"type": "string"}, {"format": "date"}]},
]


def _python_valid(schema, payload) -> bool:
    return not list(PayloadValidator(schema).iter_errors(payload))


@pytest.mark.parametrize(("schema", "payloads"), PLAIN, ids=range(len(PLAIN)))
def test_the_fast_check_agrees_with_the_python_validator_on_plain_schemas(schema, payloads):
    """Valid by jsonschema-rs exactly when valid by Python, for every payload whose numbers it is trusted with."""
    checker = _checker_new(schema)
    assert checker is not None
    verdicts = [(payload, surely_valid(checker, payload, payload_json(payload))) for payload in payloads]
    expected = [(payload, _python_valid(schema, payload) and _trusted(payload)) for payload in payloads]
    assert verdicts == expected
    assert any(verdict for _, verdict in verdicts)  # the quick yes is taken, not only the long way


def _trusted(payload) -> bool:
    """No run of 16 digits in its JSON (2**52 and 0.10000000000000002 have one)."""
    return re.search("[0-9]{16}", payload_json(payload)) is None


@pytest.mark.parametrize("schema", NOT_PLAIN, ids=range(len(NOT_PLAIN)))
def test_schemas_read_our_own_way_or_by_reference_are_left_to_the_python_validator(schema):
    assert _checker_new(schema) is None


def test_a_large_integer_is_left_to_the_python_validator():
    """2**60 + 1 is above a maximum of 2**60, which a trip through a float would hide."""
    schema = {"type": "integer", "maximum": 2**60}
    checker = _checker_new(schema)
    assert surely_valid(checker, 2**60, payload_json(2**60)) is False  # not trusted: 16 digits or more
    assert _python_valid(schema, 2**60)
    assert not _python_valid(schema, 2**60 + 1)


def test_a_publish_on_a_plain_schema_still_reports_every_error_with_its_path(demo):
    from busapp.actions.publishing import event_publish_batch
    from busapp.models import Source

    outcome = event_publish_batch(
        topic="tax-policy",
        items=[
            {"type": "tax_policy.updated", "payload": {"standard_deduction": 15000}},
            {"type": "tax_policy.updated", "payload": {"standard_deduction": -5}},
        ],
        actor="test",
        source=Source.API,
    )
    assert len(outcome.events) == 1
    assert [letter.errors for letter in outcome.dead_letters] == [
        [{"path": "/payload/standard_deduction", "message": "must be 0 or more"}]
    ]
