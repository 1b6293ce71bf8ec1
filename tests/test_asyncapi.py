"""The AsyncAPI 3.0 document: from the database, valid under the official schema, only what the caller may see."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from jsonschema import Draft202012Validator, ValidationError
from jsonschema.validators import validator_for

from busapp.actions.dead_letters import dead_letter_create
from busapp.actions.registry import event_type_create, schema_version_create, schema_version_state_set, topic_create
from busapp.asyncapi import SCHEMA_FORMAT, asyncapi_document
from busapp.models import Compatibility, SchemaVersion, Source, Topic
from busapp.validation import schema_uri
from tests.support import publish_deduction, signed_in
from tests.test_api import _errors, _token

pytestmark = pytest.mark.usefixtures("demo", "bus")

# The official AsyncAPI 3.0.0 JSON Schema, from npm @asyncapi/specs 6.11.1 (tests/vendor/README.md).
SPEC_PATH = Path(__file__).parent / "vendor" / "asyncapi-specs-6.11.1" / "asyncapi-3.0.0.schema.json"
TAX = "tax-policy"
TAX_TYPE = "tax_policy.updated"


def spec_validator() -> Any:
    """A validator of the official schema, of the draft its ``$schema`` names, checking formats too."""
    spec = json.loads(SPEC_PATH.read_text())
    validator_class = validator_for(spec)
    validator_class.check_schema(spec)
    return validator_class(spec, format_checker=validator_class.FORMAT_CHECKER)


def spec_errors(document: dict[str, Any]) -> list[str]:
    """What the official schema finds wrong with a document, each with its place."""
    return [f"{error.json_path}: {error.message}" for error in spec_validator().iter_errors(document)]


def document_as(username: str) -> dict[str, Any]:
    """/api/asyncapi.json as a signed-in person."""
    response = signed_in(username).get("/api/asyncapi.json")
    assert response.status_code == 200, response.content
    body: dict[str, Any] = response.json()
    return body


def envelope_of(document: dict[str, Any], topic: str, event_type: str) -> dict[str, Any]:
    """The envelope schema of an event type's message."""
    message = document["channels"][topic]["messages"][event_type]
    assert message["payload"]["schemaFormat"] == SCHEMA_FORMAT
    schema: dict[str, Any] = message["payload"]["schema"]
    return schema


def active_version(topic: str, event_type: str) -> SchemaVersion:
    """The version an event type's publishes are checked against now."""
    found = SchemaVersion.objects.filter(event_type__topic__name=topic, event_type__name=event_type).active().first()
    assert found is not None
    return found


def test_the_document_is_valid_asyncapi_3_0_under_the_official_schema() -> None:
    document = document_as("admin")

    assert document["asyncapi"] == "3.0.0"
    assert spec_errors(document) == []


def test_the_official_schema_rejects_a_broken_document() -> None:
    document = document_as("admin")
    del document["info"]
    document["channels"][TAX]["address"] = 5
    document["operations"][f"{TAX}.receive"]["action"] = "listen"

    problems = spec_errors(document)

    assert any("'info' is a required property" in problem for problem in problems), problems
    assert len(problems) >= 3, problems


def test_each_topic_is_a_channel_at_its_redis_channel_with_its_stream() -> None:
    document = document_as("admin")

    topics = set(Topic.objects.values_list("name", flat=True))
    assert {name for name in document["channels"] if not name.endswith(".dlq")} == topics
    channel = document["channels"][TAX]
    assert channel["address"] == TAX
    assert channel["x-redis-stream"] == {"key": f"stream:{TAX}", "field": "event", "maxlen": 100_000}
    assert document["operations"][f"{TAX}.receive"]["channel"] == {"$ref": f"#/channels/{TAX}"}
    assert document["operations"][f"{TAX}.send"]["action"] == "send"


def test_each_event_type_is_a_message_whose_payload_is_the_envelope_with_the_active_schema() -> None:
    version = active_version(TAX, TAX_TYPE)

    envelope = envelope_of(document_as("admin"), TAX, TAX_TYPE)

    assert envelope["required"] == ["id", "type", "timestamp", "payload"]
    assert envelope["properties"]["type"] == {"const": TAX_TYPE}
    payload = dict(envelope["properties"]["payload"])
    assert payload.pop("$id") == schema_uri(TAX, TAX_TYPE, version.version)
    assert payload == version.authored


def test_an_envelope_published_on_redis_matches_its_message_and_a_wrong_one_does_not() -> None:
    envelope = json.loads(publish_deduction(100).envelope)
    schema = envelope_of(document_as("admin"), TAX, TAX_TYPE)

    assert list(Draft202012Validator(schema).iter_errors(envelope)) == []
    with pytest.raises(ValidationError, match="-5 is less than the minimum of 0"):
        Draft202012Validator(schema).validate({**envelope, "payload": {"standard_deduction": -5}})


def test_a_new_version_is_shown_once_saved_marked_when_deprecated_and_the_earlier_one_once_it_is_disabled() -> None:
    event_type = active_version(TAX, TAX_TYPE).event_type
    schema = {**active_version(TAX, TAX_TYPE).schema, "title": "Tax policy updated, v2"}
    newer = schema_version_create(event_type=event_type, schema=schema, actor=User.objects.get(username="admin"))

    assert (
        envelope_of(document_as("admin"), TAX, TAX_TYPE)["properties"]["payload"]["title"] == "Tax policy updated, v2"
    )
    assert document_as("admin")["channels"][TAX]["messages"][TAX_TYPE]["x-schema-version"] == newer.version

    admin = User.objects.get(username="admin")
    schema_version_state_set(version=newer, state="deprecated", reason="v3 is coming", actor=admin)
    assert document_as("admin")["channels"][TAX]["messages"][TAX_TYPE]["deprecated"] is True

    schema_version_state_set(version=newer, state="disabled", reason="withdrawn", actor=admin)
    message = document_as("admin")["channels"][TAX]["messages"][TAX_TYPE]
    assert (message["x-schema-version"], "deprecated" in message) == (newer.version - 1, False)


def test_a_type_without_an_active_version_is_a_deprecated_message_that_accepts_no_payload() -> None:
    topic = Topic.objects.get(name=TAX)
    event_type_create(topic=topic, name="tax_policy.retired", actor="admin")

    message = document_as("admin")["channels"][TAX]["messages"]["tax_policy.retired"]

    assert message["deprecated"] is True
    assert message["payload"]["schema"]["properties"]["payload"] is False


def test_a_dead_letter_sent_to_its_dlq_matches_the_dead_letter_channel() -> None:
    topic = Topic.objects.get(name=TAX)
    letter = dead_letter_create(
        topic=topic,
        raw="{not json",
        errors=[{"path": "", "message": "not JSON"}],
        source=Source.EXTERNAL,
        actor="external",
    )
    document = document_as("admin")

    channel = document["channels"][f"{TAX}.dlq"]
    assert channel["address"] == f"{TAX}.dlq"
    assert channel["x-redis-stream"]["key"] == f"stream:{TAX}.dlq"
    reference = channel["messages"]["dead_letter"]["$ref"]
    message = document["components"]["messages"][reference.rsplit("/", 1)[1]]
    schema = message["payload"]["schema"]
    assert list(Draft202012Validator(schema).iter_errors(json.loads(letter.dlq_message))) == []
    with pytest.raises(ValidationError, match="'errors' is a required property"):
        Draft202012Validator(schema).validate({"event": {}, "received_at": 1.0, "source": "api", "topic": TAX})


def test_the_servers_come_from_settings_without_user_name_or_password(settings: Any) -> None:
    settings.REDIS_URL = "redis://bususer:s3cret-pass@redis.internal:6380/2"
    response = signed_in("admin").get("/api/asyncapi.json")
    yaml_text = signed_in("admin").get("/api/asyncapi.yaml").content.decode()

    assert response.json()["servers"] == {
        "bus": {"host": "redis.internal:6380", "pathname": "/2", "protocol": "redis", "title": "The bus's Redis"}
    }
    for text in (response.content.decode(), yaml_text):
        assert "s3cret-pass" not in text
        assert "bususer" not in text


def test_with_sentinels_each_sentinel_is_a_server_and_no_password_shows(settings: Any) -> None:
    settings.REDIS_URL = "rediss://:s3cret-pass@ignored:6379/3"
    settings.REDIS_SENTINELS = [("10.0.0.5", 26379), ("::1", 26380)]
    settings.REDIS_SENTINEL_MASTER = "hms-bus"

    document = asyncapi_document(topics=Topic.objects.all())

    servers = document["servers"]
    assert [server["host"] for server in servers.values()] == ["10.0.0.5:26379", "[::1]:26380"]
    assert {server["pathname"] for server in servers.values()} == {"/3"}
    assert {server["protocol"] for server in servers.values()} == {"rediss"}
    assert {server["x-sentinel-master"] for server in servers.values()} == {"hms-bus"}
    assert "s3cret-pass" not in json.dumps(document)
    assert spec_errors(document) == []


def test_a_person_sees_only_the_topics_they_may_view() -> None:
    admin = User.objects.get(username="admin")
    topic_create(name="hr.payroll", actor=admin)

    assert "hr.payroll" in document_as("admin")["channels"]
    assert "hr.payroll" in document_as("auditor")["channels"]
    seen_by_policy = document_as("policy")["channels"]
    assert "hr.payroll" not in seen_by_policy
    assert "hr.payroll.dlq" not in seen_by_policy
    assert TAX in seen_by_policy


def test_a_token_sees_its_topics_and_no_one_without_credentials_sees_anything() -> None:
    token = _token(can_view=True)

    answer = Client().get("/api/asyncapi.json", HTTP_AUTHORIZATION=f"Bearer {token}")

    assert set(answer.json()["channels"]) == {TAX, f"{TAX}.dlq"}
    _errors(Client().get("/api/asyncapi.json"), 401)
    _errors(Client().get("/api/asyncapi.yaml"), 401)


def test_the_yaml_document_is_the_json_document() -> None:
    client = signed_in("admin")

    as_json = client.get("/api/asyncapi.json")
    as_yaml = client.get("/api/asyncapi.yaml")

    assert as_yaml["Content-Type"] == "application/yaml; charset=utf-8"
    assert yaml.safe_load(as_yaml.content) == as_json.json()
    assert b"&id" not in as_yaml.content  # no YAML aliases: each part is written out where it belongs


def test_a_schema_referencing_another_stored_schema_is_bundled_and_still_validates() -> None:
    admin = User.objects.get(username="admin")
    topic = Topic.objects.get(name=TAX)
    target = schema_uri(TAX, TAX_TYPE, active_version(TAX, TAX_TYPE).version)
    event_type = event_type_create(topic=topic, name="tax_policy.corrected", actor=admin)
    schema = {
        "type": "object",
        "required": ["corrected"],
        "properties": {"corrected": {"$ref": target}, "note": {"$ref": "#/$defs/note"}},
        "$defs": {"note": {"type": "string", "maxLength": 10}},
    }
    schema_version_create(event_type=event_type, schema=schema, actor=admin, compatibility=Compatibility.NONE)

    document = document_as("admin")
    payload = envelope_of(document, TAX, "tax_policy.corrected")["properties"]["payload"]

    assert spec_errors(document) == []
    assert payload["$defs"][target]["$id"] == target
    checker = Draft202012Validator(payload)  # no registry: every $ref resolves inside the document
    assert checker.is_valid({"corrected": {"standard_deduction": 5}, "note": "short"})
    assert not checker.is_valid({"corrected": {"standard_deduction": -5}})
    assert not checker.is_valid({"corrected": {"standard_deduction": 5}, "note": "far too long a note"})


def test_the_queries_do_not_grow_with_the_number_of_topics() -> None:
    admin = User.objects.get(username="admin")

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            asyncapi_document(topics=Topic.objects.all())
        return len(captured)

    before = queries()
    for number in range(3):
        topic = topic_create(name=f"extra{number}", actor=admin)
        event_type = event_type_create(topic=topic, name="thing.happened", actor=admin)
        schema_version_create(event_type=event_type, schema={"type": "object"}, actor=admin)

    assert queries() == before
    assert before <= 3
