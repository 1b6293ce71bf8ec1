"""Schemas are checked when saved; payloads are checked by one cached validator per version."""

import pytest
from jsonschema import Draft202012Validator

from busapp.models import SchemaVersion
from busapp.services import schema_version_create
from busapp.validation import (
    ENVELOPE_SCHEMA,
    SchemaInvalidError,
    envelope_errors,
    payload_errors,
    schema_check,
    validator_for,
)

pytestmark = pytest.mark.django_db


def _tax_schema() -> SchemaVersion:
    return SchemaVersion.objects.get(event_type__name="tax_policy.updated", version=1)


def _withholding_schema() -> SchemaVersion:
    return SchemaVersion.objects.get(event_type__name="withholding_table.published", version=1)


def test_a_negative_deduction_is_refused_at_its_path_with_the_rule(demo):
    errors = payload_errors(_tax_schema(), {"standard_deduction": -5})

    assert errors == [{"path": "/payload/standard_deduction", "message": "-5 is less than the minimum of 0"}]


def test_a_missing_required_field_is_reported_at_the_field_itself(demo):
    errors = payload_errors(_tax_schema(), {})

    assert errors == [{"path": "/payload/standard_deduction", "message": "is required but missing"}]


def test_every_missing_required_field_is_reported_at_its_own_path(demo):
    errors = payload_errors(_withholding_schema(), {"brackets": [{}]})

    assert errors == [
        {"path": "/payload/brackets/0/rate", "message": "is required but missing"},
        {"path": "/payload/brackets/0/up_to", "message": "is required but missing"},
        {"path": "/payload/effective_date", "message": "is required but missing"},
        {"path": "/payload/tax_year", "message": "is required but missing"},
    ]


def test_every_error_is_reported_in_path_order(demo):
    payload = {
        "tax_year": 1999,
        "effective_date": "2025-02-30",
        "filing_status": "married",
        "brackets": [{"up_to": 11000, "rate": 1.5}, {"rate": "ten"}],
    }

    errors = payload_errors(_withholding_schema(), payload)

    assert [error["path"] for error in errors] == [
        "/payload/brackets/0/rate",
        "/payload/brackets/1/rate",
        "/payload/brackets/1/up_to",
        "/payload/effective_date",
        "/payload/filing_status",
        "/payload/tax_year",
    ]
    assert errors[0]["message"] == "1.5 is greater than the maximum of 1"
    assert errors[1]["message"] == "'ten' is not of type 'number'"
    assert errors[3]["message"] == "'2025-02-30' is not a 'date'"  # the format checker is on


def test_a_valid_payload_has_no_errors(demo):
    payload = {"tax_year": 2025, "effective_date": "2025-01-01", "brackets": [{"up_to": 11000, "rate": 0.1}]}

    assert payload_errors(_withholding_schema(), payload) == []


def test_a_payload_over_64_kib_is_refused_before_the_schema_is_consulted(demo):
    errors = payload_errors(_tax_schema(), {"standard_deduction": 15000, "pdf": "x" * 70_000})

    assert len(errors) == 1
    assert errors[0]["path"] == "/payload"
    assert "the limit is 65,536 bytes: send IDs, not PDFs" in errors[0]["message"]


def test_one_validator_is_compiled_per_schema_version_and_reused(demo):
    version = _tax_schema()

    assert validator_for(version) is validator_for(SchemaVersion.objects.get(pk=version.pk))


def test_a_schema_that_is_not_draft_2020_12_is_refused_with_the_reason():
    with pytest.raises(SchemaInvalidError, match=r"at /properties/amount/type: 'money' is not valid"):
        schema_check({"type": "object", "properties": {"amount": {"type": "money"}}}, uri="urn:test")


def test_a_schema_that_is_not_an_object_is_refused():
    with pytest.raises(SchemaInvalidError, match="must be an object, not list"):
        schema_check([], uri="urn:test")


def test_a_ref_to_the_network_is_refused_and_never_fetched():
    schema = {"type": "object", "properties": {"a": {"$ref": "https://example.invalid/evil.json"}}}

    with pytest.raises(SchemaInvalidError, match="does not resolve: a schema may refer only to itself"):
        schema_check(schema, uri="urn:test")


def test_a_ref_to_a_stored_schema_resolves_and_validates(demo):
    event_type = _tax_schema().event_type
    schema = {
        "type": "object",
        "properties": {"previous": {"$ref": "urn:hms:schema:tax-policy/tax_policy.updated/v1"}},
        "$defs": {"money": {"type": "number"}},
        "required": ["previous"],
    }
    version = schema_version_create(event_type=event_type, schema=schema, actor="test", compatibility="none")

    errors = payload_errors(version, {"previous": {"standard_deduction": -1}})

    assert errors == [{"path": "/payload/previous/standard_deduction", "message": "-1 is less than the minimum of 0"}]


def test_a_backward_compatible_version_may_widen_but_not_narrow(demo):
    event_type = _tax_schema().event_type
    widened = {
        "type": "object",
        "required": ["standard_deduction"],
        "properties": {"standard_deduction": {"type": "number", "minimum": 0}, "note": {"type": "string"}},
    }
    assert schema_version_create(event_type=event_type, schema=widened, actor="test").version == 2

    narrowed = {**widened, "required": ["standard_deduction", "note"]}
    with pytest.raises(SchemaInvalidError, match="/note: newly required"):
        schema_version_create(event_type=event_type, schema=narrowed, actor="test")
    assert SchemaVersion.objects.filter(event_type=event_type).count() == 2


def test_an_envelope_missing_its_id_and_with_a_string_timestamp_is_refused():
    errors = envelope_errors({"type": "tax_policy.updated", "timestamp": "now", "payload": {}})

    assert errors == [
        {"path": "/id", "message": "is required but missing"},
        {"path": "/timestamp", "message": "'now' is not of type 'number'"},
    ]


@pytest.mark.parametrize(
    "envelope",
    [
        {"id": "e1", "type": "t", "timestamp": 1712746800.5, "payload": {}},
        {"id": "e1", "type": "t", "timestamp": 0, "payload": {"a": 1}, "extra": True},
        {"id": "", "type": "t", "timestamp": 1, "payload": {}},
        {"id": "x" * 129, "type": "t", "timestamp": 1, "payload": {}},
        {"id": "e1", "type": "", "timestamp": 1, "payload": {}},
        {"id": "e1", "type": "t", "timestamp": True, "payload": {}},
        {"id": "e1", "type": "t", "timestamp": -1, "payload": {}},
        {"id": "e1", "type": "t", "timestamp": 253402300800, "payload": {}},
        {"id": "e1", "type": "t", "timestamp": 1, "payload": []},
        {"id": 7, "type": "t", "timestamp": 1, "payload": {}},
        {"type": "t", "timestamp": 1, "payload": {}},
        ["id", "type"],
        "an envelope",
    ],
)
def test_the_quick_envelope_check_agrees_with_the_schema(envelope):
    """The tap's quick yes (no jsonschema call) says yes exactly where the schema does."""
    assert (envelope_errors(envelope) == []) is Draft202012Validator(ENVELOPE_SCHEMA).is_valid(envelope)


def test_cent_amounts_are_multiples_of_a_cent_as_people_expect():
    version = SchemaVersion(
        pk=9_001, version=1, fingerprint="cents", schema={"type": "number", "multipleOf": 0.01, "minimum": 0}
    )

    accepted = [amount / 100 for amount in range(0, 100_000, 7)] + [1234.56, 19.99, 0.07, 15000]

    assert [amount for amount in accepted if payload_errors(version, amount)] == []
    assert payload_errors(version, 1234.565) == [{"path": "/payload", "message": "1234.565 is not a multiple of 0.01"}]
