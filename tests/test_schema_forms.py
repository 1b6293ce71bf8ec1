"""Forms generated from JSON Schemas: what each construct becomes, and a submitted form read back into a payload."""

import pytest
from django.http import QueryDict

from busapp.models import SchemaVersion
from busapp.schema_forms import form_bind, form_layout, form_values, payload_from_form
from busapp.validation import payload_errors

SCHEMA = {
    "type": "object",
    "required": ["amount", "country"],
    "$defs": {"money": {"type": "number", "minimum": 0, "multipleOf": 0.01, "title": "Amount (USD)"}},
    "properties": {
        "amount": {"$ref": "#/$defs/money"},
        "count": {"type": "integer", "minimum": 1, "maximum": 9, "default": 3},
        "country": {"type": "string", "enum": ["US", "CA"], "description": "Where it applies."},
        "starts": {"type": "string", "format": "date"},
        "at": {"type": "string", "format": "date-time"},
        "contact": {"type": "string", "format": "email", "maxLength": 80},
        "code": {"type": "string", "pattern": "^[A-Z]{3}$", "minLength": 3},
        "final": {"type": "boolean"},
        "office": {
            "type": "object",
            "title": "Office",
            "required": ["city"],
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
        },
        "tags": {"type": "array", "items": {"type": "string"}},
        "rows": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "object", "properties": {"rate": {"type": "number", "maximum": 1}}},
        },
    },
}


def _version(schema, pk=1):
    return SchemaVersion(pk=pk, version=1, schema=schema, fingerprint=str(hash(str(schema))))


def _fields(schema=SCHEMA):
    return {field.path: field for field in form_layout(_version(schema)).fields}


def test_each_schema_construct_becomes_its_input():
    fields = _fields()

    amount = fields["/payload/amount"]
    assert (amount.kind, amount.input_type, amount.label, amount.required) == ("number", "number", "Amount (USD)", True)
    assert amount.attrs == {"step": 0.01, "min": 0}
    assert fields["/payload/count"].attrs == {"step": 1, "min": 1, "max": 9}
    assert fields["/payload/count"].default == 3
    assert fields["/payload/country"].kind == "select"
    assert fields["/payload/country"].choices == [('"US"', "US"), ('"CA"', "CA")]
    assert fields["/payload/country"].help == "Where it applies."
    assert fields["/payload/starts"].input_type == "date"
    assert fields["/payload/at"].input_type == "datetime"  # ISO text in UTC, never a 12-hour picker
    assert fields["/payload/contact"].input_type == "email"
    assert fields["/payload/code"].attrs == {"minlength": 3, "pattern": "^[A-Z]{3}$"}
    assert fields["/payload/final"].kind == "boolean"
    office = fields["/payload/office"]
    assert office.kind == "object"
    assert [(child.path, child.required) for child in office.children] == [
        ("/payload/office/city", True),
        ("/payload/office/zip", False),
    ]
    assert fields["/payload/tags"].item.path == "/payload/tags/__index__"
    assert fields["/payload/rows"].item.children[0].path == "/payload/rows/__index__/rate"
    assert fields["/payload/rows"].min_items == 1


def test_what_a_form_cannot_draw_turns_the_schema_into_raw_json():
    for schema, reason in [
        ({"type": "object", "properties": {"a": {"oneOf": [{"type": "string"}, {"type": "number"}]}}}, "'oneOf'"),
        ({"type": "object", "patternProperties": {"^x": {"type": "string"}}}, "'patternProperties'"),
        ({"type": "object", "properties": {"a": {"type": ["string", "null"]}}}, "is not one type"),
        ({"type": "object", "properties": {"a": {"$ref": "https://example.org/s.json"}}}, "points outside"),
    ]:
        layout = form_layout(_version(schema, pk=hash(str(schema)) % 10_000))
        assert not layout.drawable
        assert reason in layout.undrawable


@pytest.mark.django_db  # the validator resolves $refs against the stored schemas
def test_a_submitted_form_reads_back_into_the_payload_its_schema_expects():
    data = QueryDict(mutable=True)
    data.update(
        {
            "/payload/amount": "12.50",
            "/payload/count": "4",
            "/payload/country": '"CA"',
            "/payload/starts": "2027-04-10",
            "/payload/at": "2027-04-10T07:00",
            "/payload/final": "true",
            "/payload/office/city": "Ottawa",
            "/payload/office/zip": "",  # left empty: left out
            "/payload/tags/0": "a",
            "/payload/tags/5": "b",  # rows between were removed in the page
            "/payload/rows/2/rate": "0.25",
        }
    )

    reading = payload_from_form(form_layout(_version(SCHEMA)), data)

    assert reading.errors == []
    assert reading.payload == {
        "amount": 12.5,
        "count": 4,
        "country": "CA",
        "starts": "2027-04-10",
        "at": "2027-04-10T07:00:00Z",
        "final": True,
        "office": {"city": "Ottawa"},
        "tags": ["a", "b"],
        "rows": [{"rate": 0.25}],
    }
    assert payload_errors(_version(SCHEMA), reading.payload) == []


def test_text_that_is_not_its_fields_type_is_an_error_at_that_field():
    data = QueryDict("/payload/amount=lots&/payload/count=2.5&/payload/country=%22MX%22&/payload/final=maybe")

    reading = payload_from_form(form_layout(_version(SCHEMA)), data)

    assert reading.errors == [
        {"path": "/payload/amount", "message": "must be a number"},
        {"path": "/payload/count", "message": "must be a whole number"},
        {"path": "/payload/country", "message": "must be one of the choices"},
        {"path": "/payload/final", "message": "must be yes or no"},
    ]


def test_a_payload_shown_again_fills_the_same_inputs():
    payload = {"amount": 3, "country": "US", "office": {"city": "Boise"}, "tags": ["x"], "rows": [{"rate": 0.1}]}
    layout = form_layout(_version(SCHEMA))

    values = form_values(layout, payload)
    data = QueryDict(mutable=True)
    data.update(values)

    assert payload_from_form(layout, data).payload == payload


def test_errors_land_on_the_deepest_input_they_belong_to_and_the_rest_on_the_form():
    layout = form_layout(_version(SCHEMA))
    data = QueryDict("/payload/rows/0/rate=2")
    errors = [
        {"path": "/payload/rows/0/rate", "message": "must be 1 or less"},
        {"path": "/payload/office/city", "message": "is required but missing"},
        {"path": "/payload/rows", "message": "[] is too short"},
        {"path": "/payload/unknown", "message": "somewhere else"},
    ]

    form = form_bind(layout, data, errors)

    by_path = {}
    stack = list(form.fields)
    while stack:
        bound = stack.pop()
        by_path[bound.name] = bound.errors
        stack.extend(bound.children + bound.rows)
    assert by_path["/payload/rows/0/rate"] == ["must be 1 or less"]
    assert by_path["/payload/office/city"] == ["Enter the city"]  # asked for by its label, in words
    assert by_path["/payload/rows"] == ["[] is too short"]
    assert form.errors == ["somewhere else"]


def test_a_fresh_form_starts_from_the_schemas_defaults_and_required_rows():
    form = form_bind(form_layout(_version(SCHEMA)), None)

    bound = {field.name: field for field in form.fields}
    assert bound["/payload/count"].value == "3"
    assert [row.name for row in bound["/payload/rows"].rows] == ["/payload/rows/0"]  # minItems 1
    assert bound["/payload/tags"].rows == []
    assert bound["/payload/rows"].row_template.name == "/payload/rows/__index__"


def test_choices_are_named_by_their_schema_titles_not_their_codes():
    fields = _fields(
        {
            "type": "object",
            "properties": {
                "status": {"oneOf": [{"const": "single", "title": "Single"}, {"const": "married_joint"}]},
                "state": {"enum": ["CA", "NY"], "x-enumNames": ["California", "New York"]},
            },
        }
    )

    assert fields["/payload/status"].choices == [('"single"', "Single"), ('"married_joint"', "married_joint")]
    assert fields["/payload/state"].choices == [('"CA"', "California"), ('"NY"', "New York")]


def test_a_refused_form_sums_up_its_problems_by_label_with_rows_numbered():
    layout = form_layout(_version(SCHEMA))
    errors = [
        {"path": "/payload/rows/1/rate", "message": "must be 1 or less"},
        {"path": "/payload/amount", "message": "is required but missing"},
    ]

    form = form_bind(layout, {"/payload/rows/0/rate": "0.1", "/payload/rows/1/rate": "2"}, errors)

    said = [(line.dom_id, line.label, line.message) for line in form.summary]
    assert ("f-payload-amount", "Amount (USD)", "Enter the amount (USD)") in said
    assert ("f-payload-rows-1-rate", "Rows, row 2: Rate", "must be 1 or less") in said
    assert form.has_errors


def test_a_date_time_is_shown_and_read_as_iso_text_in_utc():
    from busapp.schema_forms import utc_text

    assert utc_text("2027-01-01T05:00:00+05:00") == "2027-01-01 00:00"  # shown in UTC
    assert utc_text("2027-01-01T00:00:30Z") == "2027-01-01 00:00:30"  # seconds only when there are some
    assert utc_text("tomorrow") == "tomorrow"  # shown as it came; refused at its field


def test_a_blank_array_row_is_named_as_blank_not_as_each_field_missing():
    layout = form_layout(_version(SCHEMA))
    data = QueryDict(mutable=True)
    data.update({"/payload/amount": "5", "/payload/rows/0/rate": "0.1", "/payload/rows/1/rate": "  "})

    reading = payload_from_form(layout, data)

    assert reading.errors == [{"path": "/payload/rows/1", "message": "is blank: fill it in or remove it"}]
    summary = [(line.label, line.message) for line in form_bind(layout, data, reading.errors).summary]
    assert ("Rows, row 2", "is blank: fill it in or remove it") in summary
