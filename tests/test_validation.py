"""Schemas are checked when saved; payloads are checked by one cached validator per version."""

import io
import json

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from jsonschema import Draft202012Validator

from busapp.actions.registry import schema_version_create
from busapp.errors import SchemaInvalidError
from busapp.models import AuditEntry, CompatibilityMode, CompatibilityPolicy, SchemaVersion
from busapp.validation import (
    ENVELOPE_SCHEMA,
    PayloadValidator,
    envelope_errors,
    json_parse,
    json_value_errors,
    payload_errors,
    payload_size_error,
    regex_compiled,
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

    assert errors == [{"path": "/payload/standard_deduction", "message": "must be 0 or more"}]


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
    assert errors[0]["message"] == "must be 1 or less"
    assert errors[1]["message"] == "must be a number"
    assert errors[3]["message"] == "must be a date like 2027-01-31"  # the format checker is on


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

    assert errors == [{"path": "/payload/previous/standard_deduction", "message": "must be 0 or more"}]


def test_a_backward_compatible_version_may_widen_but_not_narrow(demo):
    event_type = _tax_schema().event_type
    widened = {
        "type": "object",
        "required": ["standard_deduction"],
        "properties": {"standard_deduction": {"type": "number"}, "note": {"type": "string"}},
    }
    with pytest.raises(SchemaInvalidError, match="/properties/note: PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"):
        schema_version_create(event_type=event_type, schema=widened, actor="test")  # STRICT: sound
    event_type.compatibility_policy = CompatibilityPolicy.LENIENT
    event_type.save()
    assert schema_version_create(event_type=event_type, schema=widened, actor="test").version == 2

    narrowed = {**widened, "required": ["standard_deduction", "note"]}
    with pytest.raises(SchemaInvalidError, match="/required: REQUIRED_ATTRIBUTE_ADDED: 'note' is required now"):
        schema_version_create(event_type=event_type, schema=narrowed, actor="test")
    assert SchemaVersion.objects.filter(event_type=event_type).count() == 2


def test_a_type_whose_mode_is_disabled_takes_no_new_version_even_declared_breaking(demo):
    event_type = _tax_schema().event_type
    event_type.compatibility_mode = CompatibilityMode.DISABLED
    event_type.save()

    for compatibility in ("backward", "none"):
        with pytest.raises(SchemaInvalidError, match="MODE_DISABLED: this event type takes no new versions"):
            schema_version_create(
                event_type=event_type, schema={"type": "object"}, actor="test", compatibility=compatibility
            )
    assert SchemaVersion.objects.filter(event_type=event_type).count() == 1


def test_an_envelope_missing_its_id_and_with_a_string_timestamp_is_refused():
    errors = envelope_errors({"type": "tax_policy.updated", "timestamp": "now", "payload": {}})

    assert errors == [
        {"path": "/id", "message": "is required but missing"},
        {"path": "/timestamp", "message": "must be a number"},
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
    assert payload_errors(version, 1234.565) == [{"path": "/payload", "message": "must be a multiple of 0.01"}]


# Schemas that cannot hurt: refused when saved, naming the JSON pointer and the rule


@pytest.mark.parametrize(
    ("schema", "where", "payload"),
    [
        pytest.param({"$ref": "#"}, "the schema's root", {}, id="self"),
        pytest.param(
            {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}},
            "/$defs/",
            None,  # unused here, yet another schema may refer to it
            id="two-defs",
        ),
        pytest.param({"type": "object", "allOf": [{"$ref": "#"}]}, "the schema's root", {}, id="through-allOf"),
        pytest.param(
            {"$ref": "#/$defs/a", "$defs": {"a": {"not": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/a"}]}}}},
            "/$defs/a",
            1,
            id="through-not-anyOf",
        ),
        pytest.param(
            {"$ref": "#/$defs/a", "$defs": {"a": {"if": {"type": "string"}, "then": {"$ref": "#/$defs/a"}}}},
            "/$defs/a",
            "x",
            id="through-then",
        ),
        pytest.param(
            {"$dynamicAnchor": "node", "oneOf": [{"$dynamicRef": "#node"}]}, "the schema's root", {}, id="dynamic"
        ),
        pytest.param({"properties": {"a": {"$ref": "#/properties/a"}}}, "/properties/a", {"a": 1}, id="a-property"),
    ],
)
def test_a_ref_cycle_with_no_keyword_between_is_refused_when_saved(schema, where, payload):
    with pytest.raises(SchemaInvalidError, match="cycle with no keyword between") as refused:
        schema_check(schema, uri="urn:test")

    assert str(refused.value).startswith(where)
    assert "would recurse for ever" in str(refused.value)
    if payload is not None:  # what jsonschema itself does with it
        assert _recurses_for_ever(schema, payload)


def _recurses_for_ever(schema: dict, payload: object) -> bool:
    """Whether plain jsonschema hits the recursion limit checking the payload.

    Hit inside referencing's Rust maps, the limit comes back as pyo3's PanicException (a BaseException).
    """
    try:
        Draft202012Validator(schema).is_valid(payload)
    except BaseException as error:
        return isinstance(error, RecursionError) or type(error).__name__ == "PanicException"
    return False


def test_a_schema_that_refers_back_to_itself_under_properties_is_saved_and_checks_nested_payloads(demo):
    event_type = _tax_schema().event_type
    tree = {
        "type": "object",
        "required": ["standard_deduction"],
        "properties": {"standard_deduction": {"type": "number", "minimum": 0}, "child": {"$ref": "#"}},
    }
    version = schema_version_create(event_type=event_type, schema=tree, actor="test", compatibility="none")
    payload: dict = {"standard_deduction": 1}
    inner = payload
    for _ in range(30):
        inner["child"] = {"standard_deduction": 1}
        inner = inner["child"]
    inner["standard_deduction"] = -1

    errors = payload_errors(version, payload)

    assert errors == [{"path": "/payload" + "/child" * 30 + "/standard_deduction", "message": "must be 0 or more"}]


def test_a_schema_whose_same_value_branches_multiply_is_refused():
    """Each level's allOf uses the next twice: 2**30 checks of one value, without any cycle."""
    defs = {f"d{n}": {"allOf": [{"$ref": f"#/$defs/d{n + 1}"}, {"$ref": f"#/$defs/d{n + 1}"}]} for n in range(30)}
    defs["d30"] = {"type": "object"}

    with pytest.raises(SchemaInvalidError, match="more than 1,000 subschemas through \\$ref, allOf"):
        schema_check({"$ref": "#/$defs/d0", "$defs": defs}, uri="urn:test")


def test_a_schema_nested_deeper_than_64_levels_is_refused_naming_the_pointer():
    schema: dict = {"type": "object"}
    inner = schema
    for _ in range(40):  # 40 levels of properties are 80 levels of JSON
        inner["properties"] = {"a": {"type": "object"}}
        inner = inner["properties"]["a"]

    with pytest.raises(SchemaInvalidError) as refused:
        schema_check(schema, uri="urn:test")

    assert (
        str(refused.value)
        == "/properties/a" * 32 + ": " + "is nested deeper than 64 levels of arrays and objects: flatten it"
    )


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        pytest.param({"properties": {"a": {"const": "x\x00"}}}, "/properties/a/const: holds a NUL character", id="nul"),
        pytest.param(
            {"properties": {"\ud800": {}}}, "/properties/\\ud800: its name holds a lone surrogate", id="surrogate"
        ),
    ],
)
def test_a_schema_holding_nul_or_a_lone_surrogate_is_refused(schema, message):
    with pytest.raises(SchemaInvalidError) as refused:
        schema_check(schema, uri="urn:test")

    assert str(refused.value).startswith(message)


@pytest.mark.parametrize(
    ("schema", "where", "reason"),
    [
        pytest.param(
            {"properties": {"code": {"type": "string", "pattern": "^(?=a)b"}}},
            "/properties/code/pattern: '^(?=a)b' is not allowed",
            "invalid perl operator: (?=",
            id="lookahead",
        ),
        pytest.param(
            {"patternProperties": {"^(a)\\1$": {}}},
            "/patternProperties/^(a)\\1$: '^(a)\\\\1$' is not allowed",
            "invalid escape sequence: \\1",
            id="backreference-in-a-name",
        ),
        pytest.param(
            {"$defs": {"x": {"pattern": "(" * 30_000}}},
            "/$defs/x/pattern: '" + "(" * 80 + "...' is not allowed",
            "missing )",
            id="python-re-would-recurse-out",
        ),
        pytest.param(
            {"properties": {"pattern": {"pattern": "a{1001}"}}},
            "/properties/pattern/pattern: 'a{1001}' is not allowed",
            "invalid repetition size",
            id="a-property-named-pattern",
        ),
    ],
)
def test_a_pattern_re2_refuses_is_refused_naming_the_pointer_and_the_rule(schema, where, reason):
    with pytest.raises(SchemaInvalidError) as refused:
        schema_check(schema, uri="urn:test")

    message = str(refused.value)
    assert message.startswith(where)
    assert "payloads are matched by RE2, a linear-time engine" in message
    assert reason in message


def test_a_property_named_pattern_is_not_mistaken_for_the_keyword():
    schema_check({"properties": {"pattern": {"type": "string"}, "patternProperties": {"type": "object"}}}, uri="urn:x")


def test_unevaluated_properties_over_pattern_properties_is_refused():
    schema = {"allOf": [{"patternProperties": {"^x": {}}}], "unevaluatedProperties": False}

    with pytest.raises(SchemaInvalidError) as refused:
        schema_check(schema, uri="urn:test")

    assert str(refused.value).startswith(
        "the schema's root/unevaluatedProperties: is not allowed together with the patternProperties at #/allOf/0"
    )


def _saved(demo_schema: dict) -> SchemaVersion:
    event_type = _tax_schema().event_type
    return schema_version_create(event_type=event_type, schema=demo_schema, actor="test", compatibility="none")


def _saved_before_the_rule(schema: dict) -> SchemaVersion:
    """A version saved before nested repetitions were refused (as old databases hold): stored as it was."""
    event_type = _tax_schema().event_type
    return SchemaVersion.objects.create(
        event_type=event_type, version=2, schema=schema, source=json.dumps(schema), fingerprint="old"
    )


def test_a_nested_repetition_is_refused_at_its_pointer_but_one_saved_before_is_still_matched_by_re2(demo):
    with pytest.raises(SchemaInvalidError, match=r"/properties/code/pattern: '\^\(a\+\)\+\$' is not allowed"):
        _saved({"type": "object", "properties": {"code": {"type": "string", "pattern": "^(a+)+$"}}})


def test_patterns_are_matched_by_re2_in_pattern_pattern_properties_and_additional_properties(demo):
    version = _saved_before_the_rule(
        {
            "type": "object",
            "properties": {"code": {"type": "string", "pattern": "^(a+)+$"}, "digits": {"pattern": "^\\d+$"}},
            "patternProperties": {"^x(a+)+$": {"type": "integer"}},
            "additionalProperties": False,
        }
    )
    python_re_backtracks = "a" * 40 + "!"

    errors = payload_errors(
        version,
        {
            "code": python_re_backtracks,
            "digits": "\u0661\u0662",  # Arabic-Indic digits: Python's \d takes them, ECMA-262's and RE2's do not
            "x" + "a" * 40: "not an integer",
            "x" + python_re_backtracks: 1,
        },
    )

    assert [error["path"] for error in errors] == [
        "/payload/code",
        "/payload/digits",
        "/payload/x" + "a" * 40,
        "/payload/x" + python_re_backtracks,  # refused at its own path
    ]
    assert errors[0]["message"] == 'must match the pattern "^(a+)+$"'
    assert errors[3]["message"] == 'is not a field this schema allows: field names must match "^x(a+)+$"'
    assert payload_errors(version, {"code": "aaa", "digits": "12", "xaaa": 3}) == []
    for keyword in ("pattern", "patternProperties", "additionalProperties"):
        assert PayloadValidator.VALIDATORS[keyword] is not Draft202012Validator.VALIDATORS[keyword]


def test_unique_items_on_thousands_of_objects_is_answered_correctly(demo):
    version = _saved({"type": "object", "properties": {"rows": {"type": "array", "uniqueItems": True}}})
    distinct = [{f"k{n}": 1} for n in range(5000)]  # jsonschema compared these pairwise: 22 s

    assert payload_errors(version, {"rows": distinct}) == []
    duplicated = payload_errors(version, {"rows": [*distinct[:3], {"k1": 1.0}]})
    assert [error["path"] for error in duplicated] == ["/payload/rows"]
    assert duplicated[0]["message"] == "must not hold the same item twice"
    assert payload_errors(version, {"rows": [1, True, 0, False, [1], [True]]}) == []  # JSON's true is not 1
    assert PayloadValidator.VALIDATORS["uniqueItems"] is not Draft202012Validator.VALIDATORS["uniqueItems"]


def test_regex_iri_and_uri_template_formats_are_checked_in_linear_time(demo):
    version = _saved(
        {
            "type": "object",
            "properties": {
                "rule": {"format": "regex"},
                "link": {"format": "iri"},
                "ref": {"format": "iri-reference"},
                "tpl": {"format": "uri-template"},
            },
        }
    )
    cached = regex_compiled.cache_info().currsize

    errors = payload_errors(
        version, {"rule": "(" * 15_000, "link": "http://x.org/" + "a" * 30_000, "ref": "ü/ä", "tpl": "{" * 15_000}
    )
    wrong = payload_errors(version, {"rule": "(?=a)", "link": "not an iri", "tpl": "/{a b}"})

    assert [error["path"] for error in errors] == ["/payload/rule", "/payload/tpl"]
    assert errors[0]["message"] == "must be a regular expression"
    assert [error["path"] for error in wrong] == ["/payload/link", "/payload/rule", "/payload/tpl"]
    right = {"rule": "^a\\z", "link": "https://bücher.example/straße?q=1", "tpl": "/users{/id}{?q,page}"}
    assert payload_errors(version, right) == []
    assert regex_compiled.cache_info().currsize == cached  # a sender's patterns are not kept


# JSON values the bus can carry


def test_json_value_errors_walks_any_depth_without_recursion_and_names_the_first_level_too_deep():
    deep: list = []
    inner = deep
    for _ in range(200_000):
        inner.append([])
        inner = inner[0]

    errors = json_value_errors({"rows": deep})

    assert errors == [{"path": "/payload/rows" + "/0" * 63, "message": _TOO_DEEP}]
    assert json_value_errors({"rows": _levels(63)}) == []


_TOO_DEEP = "is nested deeper than 64 levels of arrays and objects: flatten it"


def _levels(count: int) -> list:
    value: list = []
    for _ in range(count - 1):
        value = [value]
    return value


def test_json_value_errors_names_nul_and_lone_surrogates_in_strings_and_names():
    value = {"a": ["ok", "x\x00"], "b\ud83d": 1, "c": {"d": "\udc00"}, "pair": "\U0001f600"}

    assert json_value_errors(value, path="") == [
        {"path": "/a/1", "message": "holds a NUL character (\\u0000), which the database cannot store: remove it"},
        {
            "path": "/b\\ud83d",
            "message": "its name holds a lone surrogate (\\ud83d), which is not Unicode text: send valid UTF-16 pairs"
            " or UTF-8",
        },
        {
            "path": "/c/d",
            "message": "holds a lone surrogate (\\udc00), which is not Unicode text: send valid UTF-16 pairs or UTF-8",
        },
    ]


def test_json_value_errors_stops_after_twenty_problems():
    assert len(json_value_errors({str(n): "\x00" for n in range(10_000)})) == 20


@pytest.mark.parametrize(
    ("raw", "path", "message"),
    [
        pytest.param(b'{"a": "\xff"}', "", "is not valid JSON: byte 7 (b'\\xff') is not UTF-8", id="not-utf8"),
        pytest.param('{"a": "x".encode("utf-16")}', "", "is not valid JSON: Expecting", id="not-json"),
        pytest.param('{"a": NaN}', "", "is not valid JSON: NaN is not a JSON value", id="nan"),
        pytest.param('{"a": -1e999}', "", "is not valid JSON: the number -1e999 is too large", id="overflow"),
        pytest.param('{"a": {"b": ' + "[" * 50_000 + "]" * 50_000 + "}}", "/a/b" + "/0" * 62, _TOO_DEEP, id="50000"),
        pytest.param(
            '{"a": [1, {"k": "}", "v": ' + "[" * 64 + "]" * 64 + "}]}", "/a/1/v" + "/0" * 61, _TOO_DEEP, id="65"
        ),
        pytest.param('{"a\\u0000": 1}', "/a\\u0000", "its name holds a NUL character", id="nul"),
    ],
)
def test_json_parse_refuses_with_the_path_and_never_raises(raw, path, message):
    value, errors = json_parse(raw)

    assert value is None
    assert errors[0]["path"] == path
    assert errors[0]["message"].startswith(message)


def test_json_parse_finds_the_path_in_text_too_deep_for_json_loads():
    """Over Python's recursion limit, a scan of the text names the path, keys and indexes included."""
    text = '{"x": "[[[", "a": [0, "]", {"b\\"/~": ' + "[" * 5_000 + "]" * 5_000 + "}]}"

    _, errors = json_parse(text, path="/payload")

    assert errors == [{"path": '/payload/a/2/b"~1~0' + "/0" * 61, "message": _TOO_DEEP + " (character 98)"}]


def test_json_parse_counts_levels_from_the_payload_inside_an_envelope():
    envelope = '{"id": "x", "payload": ' + "[" * 64 + "]" * 64 + "}"

    assert json_parse(envelope, around=1)[1] == []
    assert json_parse(envelope)[1][0]["path"] == "/payload" + "/0" * 63


def test_payload_size_error_and_payload_errors_answer_a_lone_surrogate_instead_of_raising(demo):
    assert payload_size_error('{"a":"\ud800"}') == {
        "path": "/payload",
        "message": "character 6 holds a lone surrogate (\\ud800), which is not Unicode text: send valid UTF-16 pairs"
        " or UTF-8",
    }
    assert payload_errors(_tax_schema(), {"standard_deduction": 1, "n": "\ud800"})[0]["path"] == "/payload/n"


# Every path that saves a schema checks it


_CYCLE = {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"allOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"}


def test_sync_schemas_refuses_a_ref_cycle_and_saves_nothing(demo, tmp_path):
    (tmp_path / "cycle.json").write_text(
        json.dumps({"x-hms-topic": "tax-policy", "x-hms-event-type": "tax_policy.updated", **_CYCLE})
    )
    before = (SchemaVersion.objects.count(), AuditEntry.objects.count())

    with pytest.raises(CommandError, match=r"cycle.json: /\$defs/a: \$ref cycle with no keyword between"):
        call_command("sync_schemas", tmp_path, stdout=io.StringIO())

    assert (SchemaVersion.objects.count(), AuditEntry.objects.count()) == before


def test_sync_schemas_refuses_a_file_nested_too_deep_for_json_loads(demo, tmp_path):
    (tmp_path / "deep.json").write_text('{"x-hms-topic": "tax-policy", "x": ' + "[" * 50_000 + "]" * 50_000 + "}")

    with pytest.raises(CommandError, match=r"deep.json: /x(/0)+: is nested deeper than 64 levels"):
        call_command("sync_schemas", tmp_path, stdout=io.StringIO())

    assert SchemaVersion.objects.count() == 2


def test_the_api_refuses_a_ref_cycle_with_422_naming_the_pointer(demo):
    client = Client()
    client.force_login(User.objects.get(username="admin"))
    before = (SchemaVersion.objects.count(), AuditEntry.objects.count())

    response = client.post(
        "/api/topics/tax-policy/types/tax_policy.updated/schemas/",
        json.dumps({"schema": _CYCLE, "compatibility": "none"}),
        content_type="application/json",
    )

    assert response.status_code == 422, response.content
    [error] = response.json()["errors"]
    assert error["path"] == "/schema"
    assert error["message"].startswith("/$defs/a: $ref cycle with no keyword between (#/$defs/a -> #/$defs/b")
    assert (SchemaVersion.objects.count(), AuditEntry.objects.count()) == before


def test_the_admin_refuses_a_pattern_re2_refuses_next_to_the_schema_field(demo):
    client = Client()
    client.force_login(User.objects.get(username="admin"))
    event_type = _tax_schema().event_type
    schema = {"type": "object", "properties": {"code": {"pattern": "(?<=x)y"}}}
    before = (SchemaVersion.objects.count(), AuditEntry.objects.count())

    response = client.post(
        "/admin/busapp/schemaversion/add/",
        {"event_type": event_type.pk, "schema": json.dumps(schema), "compatibility": "none"},
    )

    assert response.status_code == 200
    assert "/properties/code/pattern: &#x27;(?&lt;=x)y&#x27; is not allowed" in response.content.decode()
    assert (SchemaVersion.objects.count(), AuditEntry.objects.count()) == before


_TRICKY = ['[{"\\', "]}", '\\"]', "\\u0000", "\u00e9\U0001f600", "x\\", 1, 2.5, None, True]


def _random_json(rng, depth: int) -> object:
    """A random JSON value nesting ``depth`` levels down one spine, its strings full of brackets, quotes, escapes."""
    value = rng.choice([*_TRICKY, "\x00", "\ud83d"] if rng.random() < 0.2 else _TRICKY)
    for _ in range(depth):
        items = [rng.choice(_TRICKY) for _ in range(rng.randint(0, 2))]
        items.insert(rng.randint(0, len(items)), value)
        if rng.random() < 0.5:
            value = items
        else:
            value = {
                f"{rng.choice(['k', '[', '}', chr(34), chr(92)])}{index}": item for index, item in enumerate(items)
            }
    return value


def test_json_parse_quick_text_checks_agree_with_the_walk_of_the_value():
    """json_parse skips the walk when the text shows it needless: on these it decides exactly as the walk does."""
    import random

    rng = random.Random(14)  # noqa: S311  (test data, not secrets)
    verdicts = set()
    for _ in range(300):
        value = _random_json(rng, rng.randint(0, 3) if rng.random() < 0.2 else rng.randint(60, 68))
        text = json.dumps(value, ensure_ascii=True)  # lone surrogates as escapes, as JSON text carries them

        parsed, errors = json_parse(text)

        assert errors == json_value_errors(value, path="")
        assert parsed == (value if not errors else None)
        verdicts.add(errors[0]["message"][:12] if errors else "")

    assert verdicts == {"", "is nested de", "holds a NUL ", "holds a lone"}


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("[" * 50_000 + "]" * 50_000, "/0/0/0", id="too-deep-for-json-loads"),
        pytest.param('{"title": "\\ud800"}', "/title holds a lone surrogate (\\ud800)", id="surrogate"),
        pytest.param('{"type": "object", "title": "a\\u0000"}', "/title holds a NUL character", id="nul"),
    ],
)
def test_the_admin_shows_json_it_cannot_carry_as_an_error_not_a_500(demo, text, shown):
    client = Client(raise_request_exception=False)
    client.force_login(User.objects.get(username="admin"))
    before = (SchemaVersion.objects.count(), AuditEntry.objects.count())

    response = client.post(
        "/admin/busapp/schemaversion/add/",
        {"event_type": _tax_schema().event_type.pk, "schema": text, "compatibility": "none"},
    )

    assert response.status_code == 200
    assert shown in response.content.decode()
    assert (SchemaVersion.objects.count(), AuditEntry.objects.count()) == before


def test_a_ref_cycle_stored_before_the_rule_refuses_payloads_instead_of_crashing(demo):
    event_type = _tax_schema().event_type
    cyclic = {"allOf": [{"$ref": "#"}]}
    version = SchemaVersion.objects.create(  # as a version saved before cycles were refused
        event_type=event_type, version=2, schema=cyclic, source=json.dumps(cyclic), fingerprint="old"
    )

    errors = payload_errors(version, {"standard_deduction": 1})

    assert [error["path"] for error in errors] == ["/payload"]
    assert "refers to itself with no keyword between" in errors[0]["message"]


def test_a_schema_that_doubles_its_work_at_every_level_is_stopped_and_ordinary_large_payloads_are_not(demo):
    """Two allOf branches refer back under the same property: plain jsonschema took 9 s at 18 levels."""
    doubling = _saved(
        {"type": "object", "allOf": [{"properties": {"a": {"$ref": "#"}}}, {"properties": {"a": {"$ref": "#"}}}]}
    )
    rows = _saved(
        {
            "type": "object",
            "properties": {
                "rows": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["a", "b"],
                        "properties": {"a": {"type": "integer", "minimum": 0}, "b": {"type": "string"}},
                    },
                }
            },
        }
    )
    deep: dict = {}
    inner = deep
    for _ in range(60):
        inner["a"] = {}
        inner = inner["a"]
    largest = {"rows": [{"a": n % 10, "b": "x", "c": True} for n in range(2600)]}  # about 64 KB

    stopped = payload_errors(doubling, deep)

    assert [error["path"] for error in stopped] == ["/payload"]
    assert stopped[0]["message"].startswith("needs more than 100,000 schema checks under version")
    assert payload_errors(doubling, {"a": {"a": {}}}) == []
    assert payload_errors(rows, largest) == []
    largest["rows"][2599]["a"] = -1
    wrong = payload_errors(rows, largest)
    assert wrong == [{"path": "/payload/rows/2599/a", "message": "must be 0 or more"}]


def test_every_rule_is_said_in_plain_words_the_same_whatever_value_broke_it(demo):
    """Messages name the rule, never the value: two bad values of one field read the same, so they group as one."""
    version = _saved(
        {
            "type": "object",
            "properties": {
                "deduction": {"type": "integer", "minimum": 0, "exclusiveMaximum": 1000000},
                "status": {"enum": ["single", "married_joint"]},
                "year": {"const": 2027},
                "code": {"type": "string", "minLength": 3},
                "rows": {"type": "array", "maxItems": 1},
                "starts": {"type": "string", "format": "date-time"},
                "rate": {"type": "number", "multipleOf": 0.01},
                "either": {"oneOf": [{"type": "integer"}, {"type": "boolean"}]},
            },
            "additionalProperties": False,
        }
    )

    def said(payload: dict) -> dict[str, str]:
        return {error["path"]: error["message"] for error in payload_errors(version, payload)}

    first = said(
        {
            "deduction": -5,
            "status": "married",
            "year": 2026,
            "code": "ab",
            "rows": [1, 2],
            "starts": "tomorrow",
            "rate": 0.125,
            "either": "yes",
            "credit_cap": 3,
        }
    )
    assert first == {
        "/payload/deduction": "must be 0 or more",
        "/payload/status": 'must be one of: "single", "married_joint"',
        "/payload/year": "must be 2027",
        "/payload/code": "must be at least 3 characters long",
        "/payload/rows": "must have at most 1 item",
        "/payload/starts": "must be a date and time like 2027-01-31T09:00:00Z",
        "/payload/rate": "must be a multiple of 0.01",
        "/payload/either": "matches none of the forms this field allows",
        "/payload/credit_cap": "is not a field this schema allows",
    }
    assert said({"deduction": -14600})["/payload/deduction"] == first["/payload/deduction"]
    assert said({"deduction": 1000000})["/payload/deduction"] == "must be less than 1000000"
    assert said({"deduction": "15,000"})["/payload/deduction"] == "must be a whole number"
