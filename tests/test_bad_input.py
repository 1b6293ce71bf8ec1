"""JSON no database could store (nested over 64 levels, NUL, lone surrogates, not UTF-8) is refused at every door.

Each refusal is a 400 or 422 (never a 500) naming the path and the rule, and writes nothing: no event,
no dead letter, no audit entry.
"""

import io
import json

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from busapp.models import AuditEntry, DeadLetter, Event
from tests.test_api import _errors, _post, _token

pytestmark = pytest.mark.usefixtures("demo", "bus")

EVENTS = "/api/topics/tax-policy/events/"
BATCH = "/api/topics/tax-policy/events/batch/"
PUBLISH = "/topics/tax-policy/publish/"
DEEP_PATH = "/payload/notes" + "/0" * 63  # the 65th level of the payload: notes is its 2nd


def _nested(levels: int) -> str:
    """A payload whose ``notes`` nests arrays so that the payload has ``levels`` levels in all."""
    return '{"standard_deduction": 1, "notes": ' + "[" * (levels - 1) + "]" * (levels - 1) + "}"


# What each door refuses: the payload's JSON text, the path named, and words of the rule.
REFUSED = [
    pytest.param(_nested(65), DEEP_PATH, "nested deeper than 64 levels", id="65-levels"),
    pytest.param(_nested(30_000), DEEP_PATH, "nested deeper than 64 levels", id="30000-levels"),
    pytest.param('{"standard_deduction": 1, "note": "a\\u0000b"}', "/payload/note", "NUL character", id="nul"),
    pytest.param('{"standard_deduction": 1, "n\\u0000": 1}', "/payload/n\\u0000", "NUL character", id="nul-key"),
    pytest.param('{"standard_deduction": 1, "note": "\\ud800"}', "/payload/note", "lone surrogate", id="surrogate"),
    pytest.param('{"standard_deduction": 1, "\\udfff": 1}', "/payload/\\udfff", "lone surrogate", id="surrogate-key"),
]


class Nothing:
    """Counts of what a refusal must not have written."""

    def __init__(self) -> None:
        self.before = self.now()

    @staticmethod
    def now() -> tuple[int, int, int]:
        return Event.objects.count(), DeadLetter.objects.count(), AuditEntry.objects.count()

    def written(self) -> bool:
        return self.now() != self.before


def _body(payload_text: str) -> str:
    return '{"type": "tax_policy.updated", "payload": ' + payload_text + "}"


@pytest.mark.parametrize(("payload", "path", "rule"), REFUSED)
def test_the_api_refuses_a_payload_no_database_could_store_naming_the_path(payload, path, rule):
    token = _token()
    nothing = Nothing()

    errors = _errors(_post(EVENTS, _body(payload), token), 400)

    assert errors[0]["path"] == path
    assert rule in errors[0]["message"]
    assert not nothing.written()


@pytest.mark.parametrize(("payload", "path", "rule"), REFUSED)
def test_the_api_refuses_a_batch_holding_one_such_payload_whole(payload, path, rule):
    token = _token()
    good = '{"type": "tax_policy.updated", "payload": {"standard_deduction": 1}}'
    body = '{"events": [' + good + ", " + _body(payload) + "]}"
    nothing = Nothing()

    errors = _errors(_post(BATCH, body, token), 400)

    assert errors[0]["path"] == "/events/1" + path
    assert rule in errors[0]["message"]
    assert not nothing.written()


def test_a_payload_of_exactly_64_levels_is_accepted_alone_and_in_a_batch():
    token = _token()
    batch = '{"events": [' + _body(_nested(64)) + "]}"

    single = _post(EVENTS, _body(_nested(64)), token)
    many = _post(BATCH, batch, token)

    assert single.status_code in (201, 202), single.content
    assert many.status_code == 200, many.content
    assert many.json()["dead_lettered"] == 0
    assert Event.objects.count() == 2


def test_a_body_that_is_not_utf8_is_400_naming_the_byte():
    token = _token()
    nothing = Nothing()

    errors = _errors(_post(EVENTS, _body('{"standard_deduction": 1}').encode("utf-16"), token), 400)

    assert errors[0]["path"] == ""
    assert "is not UTF-8" in errors[0]["message"]
    assert not nothing.written()


def test_a_schema_upload_with_a_nul_is_400_naming_the_path():
    client = Client()
    client.force_login(User.objects.get(username="admin"))
    schema = '{"type": "object", "properties": {"a\\u0000": {"type": "string"}}}'
    nothing = Nothing()

    errors = _errors(
        _post("/api/topics/tax-policy/types/tax_policy.updated/schemas/", '{"schema": ' + schema + "}", client=client),
        400,
    )

    assert errors == [
        {
            "path": "/schema/properties/a\\u0000",
            "message": "its name holds a NUL character (\\u0000), which the database cannot store: remove it",
        }
    ]
    assert not nothing.written()


@pytest.mark.parametrize(("payload", "path", "rule"), REFUSED)
def test_the_raw_json_form_refuses_it_naming_the_path(payload, path, rule):
    client = Client()
    client.force_login(User.objects.get(username="policy"))
    nothing = Nothing()

    response = client.post(
        PUBLISH, {"type": "tax_policy.updated", "mode": "raw", "payload_json": payload, "action": "preview"}
    )

    assert response.status_code == 400
    page = response.content.decode()
    assert path in page
    assert rule in page
    assert not nothing.written()


def test_a_nul_typed_into_a_generated_input_is_refused_at_its_field():
    from busapp.actions.registry import schema_version_create
    from busapp.models import EventType

    schema = {
        "type": "object",
        "required": ["standard_deduction"],
        "properties": {"standard_deduction": {"type": "number"}, "note": {"type": "string"}},
    }
    event_type = EventType.objects.get(name="tax_policy.updated")
    schema_version_create(event_type=event_type, schema=schema, actor="test", compatibility="none")
    client = Client()
    client.force_login(User.objects.get(username="policy"))
    nothing = Nothing()

    response = client.post(
        PUBLISH,
        {
            "type": "tax_policy.updated",
            "action": "preview",
            "/payload/standard_deduction": "1",
            "/payload/note": "a\x00b",
        },
    )

    assert response.status_code == 400
    assert "NUL character" in response.content.decode()
    assert not nothing.written()


@pytest.mark.parametrize(("payload", "path", "rule"), REFUSED)
def test_the_publish_command_refuses_it_naming_the_path_and_keeps_nothing(payload, path, rule):
    err = io.StringIO()
    nothing = Nothing()

    with pytest.raises(CommandError, match="nothing was kept"):
        call_command("publish", "tax-policy", "tax_policy.updated", payload, stderr=err, stdout=io.StringIO())

    assert f"{path}: " in err.getvalue()
    assert rule in err.getvalue()
    assert not nothing.written()


def test_the_publish_command_still_dead_letters_text_that_is_not_json():
    err = io.StringIO()

    with pytest.raises(CommandError, match="kept as dead letter"):
        call_command("publish", "tax-policy", "tax_policy.updated", "{nope", stderr=err, stdout=io.StringIO())

    assert "/payload: is not valid JSON" in err.getvalue()
    assert DeadLetter.objects.count() == 1


def test_a_schema_pattern_that_backtracks_in_python_answers_a_long_payload_at_once(bus):
    """^(a+)+$ held a web thread 11 s with Python's re on 27 characters; RE2 answers in linear time."""
    from busapp.models import EventType, SchemaVersion

    event_type = EventType.objects.get(name="tax_policy.updated")
    schema = {
        "type": "object",
        "required": ["standard_deduction"],
        "properties": {"standard_deduction": {"type": "number"}, "code": {"type": "string", "pattern": "^(a+)+$"}},
    }
    # Refused as a new version now (a nested repetition); one saved before the rule is still served safely.
    SchemaVersion.objects.create(
        event_type=event_type, version=2, schema=schema, source=json.dumps(schema), fingerprint="saved-before"
    )
    token = _token()

    refused = _post(
        EVENTS, {"type": "tax_policy.updated", "payload": {"standard_deduction": 1, "code": "a" * 40 + "!"}}, token
    )
    accepted = _post(
        EVENTS, {"type": "tax_policy.updated", "payload": {"standard_deduction": 1, "code": "a" * 40}}, token
    )

    errors = _errors(refused, 422)
    assert errors == [{"path": "/payload/code", "message": 'must match the pattern "^(a+)+$"'}]
    assert accepted.status_code in (201, 202), accepted.content
    assert json.loads(accepted.content)["event"]["payload"]["code"] == "a" * 40


def test_a_dead_letter_of_text_too_deep_to_parse_keeps_it_as_text_and_is_not_replayable():
    from busapp.actions.dead_letters import dead_letter_contents
    from busapp.actions.publishing import dead_letter_build
    from busapp.models import Topic

    raw = '{"type": "tax_policy.updated", "payload": {"a": ' + "[" * 50_000 + "]" * 50_000 + "}}"
    errors = [{"path": "/payload/a", "message": "is nested deeper than 64 levels of arrays and objects: flatten it"}]

    letter = dead_letter_build(
        topic=Topic.objects.get(name="tax-policy"), raw=raw, errors=errors, source="external", actor="tap"
    )

    assert json.loads(letter.dlq_message)["event"] == raw
    assert dead_letter_contents(letter) == (None, None)
