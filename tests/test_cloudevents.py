"""CloudEvents 1.0 out of the history: one event over the API when asked for, and the NDJSON export's third format."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
from django.http import StreamingHttpResponse
from django.test import Client
from jsonschema.validators import validator_for

from busapp.actions.publishing import event_publish_batch
from busapp.models import AuditEntry, Event, Source
from busapp.publishing import stream_key
from tests.support import approved_withholding_event, signed_in
from tests.test_api import _errors, _get, _token

pytestmark = pytest.mark.usefixtures("demo_committed", "bus")

CE = "application/cloudevents+json"
SPEC = Path(__file__).parent / "vendor" / "cloudevents-10.0.0" / "cloudevents.json"


def spec_errors(event: Any) -> list[str]:
    """What the official CloudEvents 1.0 schema finds wrong with a structured event, formats included."""
    spec = json.loads(SPEC.read_text())
    validator_class = validator_for(spec)
    validator_class.check_schema(spec)
    validator = validator_class(spec, format_checker=validator_class.FORMAT_CHECKER)
    return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(event)]


def _publish(*deductions: int) -> list[Event]:
    """Events on tax-policy, one per deduction, in one batch from a service."""
    items = [{"type": "tax_policy.updated", "payload": {"standard_deduction": amount}} for amount in deductions]
    return event_publish_batch(topic="tax-policy", items=items, actor="service:efile", source=Source.API).events


def _streamed(response: Any) -> str:
    assert isinstance(response, StreamingHttpResponse)
    return b"".join(cast(Iterator[bytes], response.streaming_content)).decode()


def test_the_vendored_schema_refuses_what_the_spec_refuses() -> None:
    assert spec_errors({"specversion": "1.0", "id": "x", "source": "/t", "type": "t"}) == []
    assert spec_errors({"specversion": "1.0", "id": "x", "type": "t"})  # no source
    assert spec_errors({"specversion": "1.0", "id": "x", "source": "/t", "type": "t", "time": "yesterday"})


def test_an_event_asked_for_as_a_cloudevent_maps_the_envelope_and_validates() -> None:
    [event] = _publish(1500)
    client = signed_in("auditor")

    response = client.get(f"/api/events/{event.envelope_id}/", HTTP_ACCEPT=CE)

    assert response.status_code == 200
    assert response["Content-Type"] == CE
    body = json.loads(response.content)
    assert spec_errors(body) == []
    envelope = json.loads(event.envelope)
    assert body["specversion"] == "1.0"
    assert (body["id"], body["type"], body["data"]) == (event.envelope_id, "tax_policy.updated", envelope["payload"])
    assert body["data"] == {"standard_deduction": 1500}
    assert body["time"].endswith("Z")
    assert dt.datetime.fromisoformat(body["time"]) == dt.datetime.fromtimestamp(envelope["timestamp"], tz=dt.UTC)
    assert body["datacontenttype"] == "application/json"
    assert body["source"] == "http://testserver/api/topics/tax-policy/"
    assert body["dataschema"] == "http://testserver/api/topics/tax-policy/types/tax_policy.updated/versions/1/"
    assert (body["hmstopic"], body["hmsschemaversion"], body["hmspublisher"]) == ("tax-policy", 1, "service:efile")
    assert body["hmspublishedvia"] == "api"
    assert all(name.isalnum() and name.islower() for name in body)  # the spec's attribute naming rule


def test_source_and_dataschema_resolve_to_the_topic_and_the_schema_version_it_was_checked_against() -> None:
    [event] = _publish(7)
    client = signed_in("auditor")
    body = client.get(f"/api/events/{event.envelope_id}/", HTTP_ACCEPT=CE).json()

    topic = client.get(urlsplit(body["source"]).path)
    schema = client.get(urlsplit(body["dataschema"]).path)

    assert topic.status_code == 200
    assert topic.json()["name"] == "tax-policy"
    assert schema.status_code == 200
    assert schema.json()["version"] == event.schema_version.version
    assert schema.json()["schema"] == event.schema_version.authored


def test_json_stays_the_default_answer() -> None:
    [event] = _publish(3)
    client = signed_in("auditor")
    for accept in (None, "*/*", "application/json", f"application/json, {CE};q=0.5"):
        headers = {"HTTP_ACCEPT": accept} if accept else {}
        response = client.get(f"/api/events/{event.envelope_id}/", **headers)
        assert response.status_code == 200, accept
        assert response["Content-Type"] == "application/json", accept
        assert response.json()["envelope"] == json.loads(event.envelope)


def test_refusals_keep_the_one_error_shape_in_json_when_a_cloudevent_was_asked_for() -> None:
    [event] = _publish(3)
    unknown = signed_in("auditor").get("/api/events/no-such-event/", HTTP_ACCEPT=CE)
    _errors(unknown, 404)
    publisher = _token("publisher-only", can_view=False)
    refused = Client().get(
        f"/api/events/{event.envelope_id}/", HTTP_AUTHORIZATION=f"Bearer {publisher}", HTTP_ACCEPT=CE
    )
    assert "issued to publish only" in _errors(refused, 403)[0]["message"]
    _errors(Client().get(f"/api/events/{event.envelope_id}/", HTTP_ACCEPT=CE), 401)


def test_an_event_on_a_topic_the_caller_may_not_see_is_404_as_a_cloudevent_too() -> None:
    withholding = approved_withholding_event()
    token = _token(topics=("tax-policy",), can_publish=False, can_view=True)
    hidden = Client().get(
        f"/api/events/{withholding.envelope_id}/", HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_ACCEPT=CE
    )
    _errors(hidden, 404)
    # Its schema version answers as its siblings under /api/topics/ do: a topic not in the token's list is 403.
    _errors(_get("/api/topics/irs.withholding/types/withholding_table.published/versions/1/", token), 403)


def test_the_schema_version_route_names_the_versions_there_are_when_asked_for_another() -> None:
    message = _errors(signed_in("auditor").get("/api/topics/tax-policy/types/tax_policy.updated/versions/99/"), 404)
    assert "has no version 99" in message[0]["message"]


def test_the_cloudevents_export_writes_one_valid_event_a_line_for_exactly_the_filtered_events() -> None:
    events = _publish(100, 20000, 30000)
    client = signed_in("auditor")

    response = client.get("/events/export.cloudevents.ndjson", {"where": "standard_deduction >= 15000"})

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/x-ndjson")
    assert ".cloudevents.ndjson" in response["Content-Disposition"]
    lines = [json.loads(line) for line in _streamed(response).splitlines()]
    assert [line["id"] for line in lines] == [event.envelope_id for event in reversed(events[1:])]
    for line in lines:
        assert spec_errors(line) == []
        api = client.get(f"/api/events/{line['id']}/", HTTP_ACCEPT=CE).json()
        assert line == api  # the same event the API answers, attribute for attribute
    entry = AuditEntry.objects.filter(action="events.export").latest("seq")
    assert (entry.details["format"], entry.details["rows"]) == ("cloudevents.ndjson", 2)


def test_the_history_page_offers_the_cloudevents_export_and_the_audit_log_does_not_take_it() -> None:
    client = signed_in("auditor")
    assert 'id="export-cloudevents"' in client.get("/events/").content.decode()
    assert 'id="export-cloudevents"' not in client.get("/audit/").content.decode()
    assert client.get("/audit/export.cloudevents.ndjson").status_code == 404
    assert client.get("/events/export.cloudevents.json").status_code == 404


def test_the_envelope_on_redis_does_not_change(bus: Any) -> None:
    [event] = _publish(15000)
    signed_in("auditor").get(f"/api/events/{event.envelope_id}/", HTTP_ACCEPT=CE)

    [(_, fields)] = bus.xrange(stream_key("tax-policy"))

    assert fields[b"event"].decode() == Event.objects.get(pk=event.pk).envelope
    envelope = json.loads(fields[b"event"])
    assert set(envelope) == {"id", "type", "timestamp", "topic", "schema_version", "source", "publisher", "payload"}
    assert "specversion" not in envelope
