"""The keyword diff of two schema versions: changes at the pointer of the keyword, marked with whom they break."""

from __future__ import annotations

from referencing import Registry

from busapp.compatibility import Finding, directional_findings
from busapp.models import CompatibilityPolicy
from busapp.schema_diff import schema_diff


def _rows(before: object, after: object, **marks: list[Finding]) -> list[tuple[str, str | None, str | None, str]]:
    return [(row.path, row.before, row.after, row.breaks) for row in schema_diff(before, after, **marks)]


def test_nested_properties_are_compared_keyword_by_keyword_not_as_one_changed_object() -> None:
    before = {"type": "object", "properties": {"a": {"type": "number", "minimum": 0, "title": "A"}}}
    after = {"type": "object", "properties": {"a": {"type": "number", "minimum": 1, "title": "A"}, "b": True}}

    assert _rows(before, after) == [
        ("/properties/a/minimum", "0", "1", ""),
        ("/properties/b", None, "true", ""),
    ]


def test_subschema_lists_are_compared_by_position_and_pointer_tokens_are_escaped() -> None:
    before = {"anyOf": [{"type": "string"}, {"type": "null"}], "properties": {"a/b": {"type": "string"}}}
    after = {"anyOf": [{"type": "string", "maxLength": 5}], "properties": {"a/b": {"type": "integer"}}}

    assert _rows(before, after) == [
        ("/anyOf/0/maxLength", None, "5", ""),
        ("/anyOf/1", '{"type": "null"}', None, ""),
        ("/properties/a~1b/type", '"string"', '"integer"', ""),
    ]


def test_equal_schemas_have_no_rows() -> None:
    schema = {"type": "object", "required": ["a"], "properties": {"a": {"enum": [1, 2]}}}

    assert _rows(schema, dict(schema)) == []


def test_rows_are_marked_by_the_direction_the_checker_finds_them_breaking() -> None:
    before = {"type": "object", "properties": {"rate": {"type": "number", "maximum": 1}}}
    after = {"type": "object", "required": ["rate"], "properties": {"rate": {"type": "number", "maximum": 2}}}
    writers, readers = directional_findings(
        before,
        after,
        policy=CompatibilityPolicy.STRICT,
        registry=Registry(),
        old_uri="urn:test:old",
        new_uri="urn:test:new",
    )

    rows = {row.path: row.breaks for row in schema_diff(before, after, writers=writers, readers=readers)}

    assert rows == {"/properties/rate/maximum": "readers", "/required": "writers"}
