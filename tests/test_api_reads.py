"""The JSON API's reads and admin actions: history, one event, schema versions, dead letters and their replay."""

import copy
import datetime as dt
import json
from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import User
from django.test import Client

from busapp.actions.dead_letters import dead_letter_create
from busapp.actions.publishing import event_publish_batch
from busapp.models import (
    AuditEntry,
    CompatibilityPolicy,
    DeadLetter,
    DeadLetterStatus,
    Event,
    EventType,
    SchemaVersion,
    Source,
    Topic,
)
from busapp.publishing import stream_key
from tests.support import approved_withholding_event, signed_in
from tests.test_api import _errors, _get, _post, _token

pytestmark = pytest.mark.usefixtures("demo_committed", "bus")

SCHEMAS = "/api/topics/tax-policy/types/tax_policy.updated/schemas/"


def _publish(*deductions: int, actor: str = "service:efile", source: str = Source.API) -> list[Event]:
    """Events on tax-policy, one per deduction, in one batch."""
    items = [{"type": "tax_policy.updated", "payload": {"standard_deduction": amount}} for amount in deductions]
    return event_publish_batch(topic="tax-policy", items=items, actor=actor, source=source).events


def _events(client: Client, **query) -> dict:
    """GET /api/events/ with a query (lists become repeated parameters), as the caller of ``client``."""
    response = client.get(f"/api/events/?{urlencode(query, doseq=True)}")
    assert response.status_code == 200, response.content
    return response.json()


def _letter(deduction: int = -5, raw: str | None = None) -> DeadLetter:
    """An open dead letter on tax-policy whose deduction broke the schema."""
    body = raw or json.dumps({"type": "tax_policy.updated", "payload": {"standard_deduction": deduction}})
    return dead_letter_create(
        topic=Topic.objects.get(name="tax-policy"),
        raw=body,
        errors=[{"path": "/payload/standard_deduction", "message": "must be 0 or more"}],
        source=Source.CLI,
        actor="cli:test",
    )


# The history


def test_the_history_narrows_by_field_and_payload_condition_like_the_page():
    _publish(100, 20000, 30000)
    _publish(25000, actor="service:payroll")
    auditor = signed_in("auditor")

    rich = _events(auditor, topic="tax-policy", publisher="service:efile", where=["standard_deduction >= 15000"])

    assert [event["envelope"]["payload"]["standard_deduction"] for event in rich["events"]] == [30000, 20000]
    assert rich["next"] is None
    first = rich["events"][0]
    stored = Event.objects.get(envelope_id=first["id"])
    assert first["envelope"] == json.loads(stored.envelope)
    assert (first["topic"], first["type"], first["status"], first["source"], first["publisher"]) == (
        "tax-policy",
        "tax_policy.updated",
        "published",
        "api",
        "service:efile",
    )
    assert first["stream_id"] == stored.stream_id != ""
    assert dt.datetime.fromisoformat(first["accepted_at"]) == stored.created_at
    assert dt.datetime.fromisoformat(first["published_at"]) == stored.published_at
    assert dt.datetime.fromisoformat(first["timestamp"]) == stored.timestamp
    both = _events(auditor, where=["standard_deduction > 15000", "standard_deduction < 26000"])
    assert [event["envelope"]["payload"]["standard_deduction"] for event in both["events"]] == [25000, 20000]


def test_the_cursor_walks_the_whole_filtered_history_once_newest_first():
    _publish(*range(7))
    _publish(*range(100, 105))
    expected = list(Event.objects.order_by("-timestamp", "-id").values_list("envelope_id", flat=True))
    auditor = signed_in("auditor")

    walked, cursor, pages = [], None, 0
    while True:
        page = _events(auditor, limit=5, **({"cursor": cursor} if cursor else {}))
        walked += [event["id"] for event in page["events"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break

    assert walked == expected
    assert len(set(walked)) == 12
    assert pages == 3


def test_a_wrong_condition_filter_or_limit_is_400_naming_each_parameter_and_its_rule():
    auditor = signed_in("auditor")

    errors = _errors(auditor.get("/api/events/", {"where": "standard_deduction >> 5", "limit": 0}), 400)

    by_path = {error["path"]: error["message"] for error in errors}
    assert set(by_path) == {"/query/where", "/query/limit"}
    assert "unknown operator '>>'" in by_path["/query/where"]
    assert "greater than or equal to 1" in by_path["/query/limit"]
    reversed_range = auditor.get("/api/events/", {"since": "2026-02-01 00:00", "until": "2026-01-01 00:00"})
    assert "swap them" in _errors(reversed_range, 400)[0]["message"]
    out_of_range = _errors(auditor.get("/api/events/", {"since": "0001-01-01T00:00:00+05:00"}), 400)
    assert out_of_range[0]["path"] == "/query/since"
    assert "out of range" in out_of_range[0]["message"]
    prefixed = _errors(auditor.get("/api/events/", {"where": "payload.standard_deduction >= 1"}), 400)
    assert prefixed[0]["path"] == "/query/where"
    assert "leave out 'payload.'" in prefixed[0]["message"]


def test_a_tampered_cursor_is_400_not_a_page_elsewhere():
    _publish(*range(3))
    auditor = signed_in("auditor")
    cursor = _events(auditor, limit=1)["next"]
    value, signature = cursor.split(":", 1)

    errors = _errors(auditor.get("/api/events/", {"cursor": value.replace("o", "n", 1) + ":" + signature}), 400)

    assert errors == [
        {
            "path": "/query/cursor",
            "message": "this page link was changed or is damaged: start again from the first page",
        }
    ]


def test_a_token_reads_only_the_history_of_its_topics_and_one_without_the_view_right_none():
    _publish(1)
    withholding = approved_withholding_event()
    token = _token(topics=("tax-policy",), can_publish=False, can_view=True)

    listed = json.loads(_get("/api/events/", token).content)["events"]

    assert [event["topic"] for event in listed] == ["tax-policy"]
    assert (
        "not one of the available choices"
        in _errors(_get("/api/events/?topic=irs.withholding", token), 400)[0]["message"]
    )
    _errors(_get(f"/api/events/{withholding.envelope_id}/", token), 404)
    assert _get(f"/api/events/{listed[0]['id']}/", token).status_code == 200
    publisher = _token("publisher-only", can_view=False)
    assert "issued to publish only" in _errors(_get("/api/events/", publisher), 403)[0]["message"]
    _errors(_get(f"/api/events/{listed[0]['id']}/", publisher), 403)


def test_a_persons_history_holds_only_the_topics_they_may_see():
    _publish(1)
    User.objects.create_user("outsider")

    assert _events(signed_in("outsider"))["events"] == []
    assert [event["topic"] for event in _events(signed_in("policy"))["events"]] == ["tax-policy"]


# One event's record


def test_an_events_record_names_its_schema_version_and_the_dead_letter_it_replays():
    letter = _letter()
    replayed = _post(f"/api/dlq/{letter.pk}/replay/", {"payload": {"standard_deduction": 5}}, client=signed_in("admin"))
    envelope_id = replayed.json()["id"]

    record = signed_in("auditor").get(f"/api/events/{envelope_id}/").json()

    assert (record["id"], record["schema_version"], record["replayed_from"], record["source"]) == (
        envelope_id,
        1,
        letter.pk,
        "replay",
    )
    assert record["envelope"]["payload"] == {"standard_deduction": 5}
    plain = _publish(7)[0]
    assert signed_in("auditor").get(f"/api/events/{plain.envelope_id}/").json()["replayed_from"] is None


def test_an_event_the_caller_may_not_see_is_404_like_an_unknown_one():
    hidden = approved_withholding_event()
    User.objects.create_user("outsider")
    outsider = signed_in("outsider")

    hidden_errors = _errors(outsider.get(f"/api/events/{hidden.envelope_id}/"), 404)
    unknown_errors = _errors(outsider.get("/api/events/no-such-event/"), 404)

    assert hidden_errors[0]["message"].replace(hidden.envelope_id, "X") == unknown_errors[0]["message"].replace(
        "no-such-event", "X"
    )
    assert signed_in("auditor").get(f"/api/events/{hidden.envelope_id}/").status_code == 200


# Schema versions


def _lenient_tax_policy() -> None:
    """The seed's type under the LENIENT policy: an optional property may join its open object."""
    EventType.objects.filter(name="tax_policy.updated").update(compatibility_policy=CompatibilityPolicy.LENIENT)


NOTE_SCHEMA = {
    "type": "object",
    "required": ["standard_deduction"],
    "properties": {
        "standard_deduction": {"type": "number", "minimum": 0},
        "note": {"type": "string", "maxLength": 200},
    },
}


def test_anyone_who_may_view_the_topic_lists_its_types_schema_versions():
    token = _token(can_publish=False)

    body = json.loads(_get(SCHEMAS, token).content)

    assert (body["topic"], body["type"]) == ("tax-policy", "tax_policy.updated")
    [version] = body["schema_versions"]
    assert (version["version"], version["compatibility"], version["state"]) == (1, "backward", "enabled")
    assert version["schema"]["required"] == ["standard_deduction"]
    assert (
        "unknown event type 'nope'"
        in _errors(_get("/api/topics/tax-policy/types/nope/schemas/", token), 404)[0]["message"]
    )
    _errors(_get("/api/topics/irs.withholding/types/withholding_table.published/schemas/", token), 403)


def test_a_bus_admin_adds_the_next_schema_version_and_it_is_audited_and_in_force():
    _lenient_tax_policy()
    response = _post(SCHEMAS, {"schema": NOTE_SCHEMA}, client=signed_in("admin"))

    assert response.status_code == 201, response.content
    created = response.json()
    assert (created["version"], created["compatibility"], created["state"]) == (2, "backward", "enabled")
    assert created["schema"] == NOTE_SCHEMA
    entry = AuditEntry.objects.get(action="schema_version.create", target="schema:tax-policy/tax_policy.updated/v2")
    assert entry.actor_name == "admin"
    listed = signed_in("policy").get(SCHEMAS).json()["schema_versions"]
    assert [version["version"] for version in listed] == [2, 1]
    too_long = {"type": "tax_policy.updated", "payload": {"standard_deduction": 1, "note": "x" * 201}}
    assert _errors(_post("/api/topics/tax-policy/events/", too_long, _token()), 422)[0]["path"] == "/payload/note"


@pytest.mark.parametrize("who", ["policy", "auditor", "token"])
def test_only_a_bus_admin_may_add_a_schema_version_and_refusals_are_audited(who):
    if who == "token":
        response = _post(SCHEMAS, {"schema": NOTE_SCHEMA}, _token("admin-feed"))
    else:
        response = _post(SCHEMAS, {"schema": NOTE_SCHEMA}, client=signed_in(who))

    message = _errors(response, 403)[0]["message"]

    assert ("service tokens may not add schema versions" if who == "token" else "busapp.add_schemaversion") in message
    assert SchemaVersion.objects.filter(event_type__name="tax_policy.updated").count() == 1
    refusal = AuditEntry.objects.get(action="schema_version.create.refused")
    assert refusal.target == "schema:tax-policy/tax_policy.updated"
    assert refusal.actor_name == ("service:admin-feed" if who == "token" else who)


def test_an_invalid_or_breaking_schema_is_422_with_the_reason_and_saves_nothing():
    _lenient_tax_policy()  # only the new requirement breaks, not the new optional property
    admin = signed_in("admin")
    broken = {"type": "object", "properties": {"standard_deduction": {"type": "numeric"}}}
    breaking = copy.deepcopy(NOTE_SCHEMA) | {"required": ["standard_deduction", "note"]}

    invalid = _errors(_post(SCHEMAS, {"schema": broken}, client=admin), 422)
    incompatible = _errors(_post(SCHEMAS, {"schema": breaking}, client=admin), 422)

    assert invalid[0]["path"] == "/schema"
    assert "numeric" in invalid[0]["message"]
    assert incompatible[0]["message"].startswith(
        "not compatible under BACKWARD (LENIENT): /required: REQUIRED_ATTRIBUTE_ADDED: 'note' is required now: "
        "events valid under v1 are refused"
    )
    assert "/schema" in {error["path"] for error in _errors(_post(SCHEMAS, {"schema": []}, client=admin), 400)}
    assert SchemaVersion.objects.filter(event_type__name="tax_policy.updated").count() == 1
    allowed = _post(SCHEMAS, {"schema": breaking, "compatibility": "none"}, client=admin)
    assert (allowed.status_code, allowed.json()["compatibility"]) == (201, "none")


# Dead letters


def test_the_dead_letter_list_holds_open_letters_of_visible_topics_newest_first_a_page_at_a_time():
    letters = [_letter(-n) for n in range(1, 6)]
    DeadLetter.objects.filter(pk=letters[0].pk).update(status=DeadLetterStatus.DISCARDED)
    token = _token(can_publish=False)

    first = json.loads(_get("/api/dlq/?limit=3", token).content)
    second = json.loads(_get(f"/api/dlq/?{urlencode({'limit': 3, 'cursor': first['next']})}", token).content)

    listed = [letter["id"] for letter in first["dead_letters"] + second["dead_letters"]]
    assert listed == [letter.pk for letter in reversed(letters[1:])]
    assert second["next"] is None
    shown = first["dead_letters"][0]
    assert (shown["topic"], shown["status"], shown["source"], shown["publisher"]) == (
        "tax-policy",
        "open",
        "cli",
        "cli:test",
    )
    assert json.loads(shown["raw"]) == {"type": "tax_policy.updated", "payload": {"standard_deduction": -5}}
    assert shown["errors"] == [{"path": "/payload/standard_deduction", "message": "must be 0 or more"}]
    assert _errors(_get("/api/dlq/?cursor=forged", token), 400)[0]["path"] == "/query/cursor"
    assert _errors(_get("/api/dlq/?topic=irs.withholding", token), 400)[0]["path"] == "/query/topic"
    User.objects.create_user("outsider")
    assert signed_in("outsider").get("/api/dlq/").json() == {"dead_letters": [], "next": None}


def test_a_replay_as_it_arrived_or_fixed_publishes_a_new_event_and_closes_the_letter(bus):
    fixable, fine = _letter(-5), _letter(raw='{"type": "tax_policy.updated", "payload": {"standard_deduction": 9}}')
    admin = signed_in("admin")

    fixed = _post(f"/api/dlq/{fixable.pk}/replay/", {"payload": {"standard_deduction": 5}}, client=admin)
    as_arrived = _post(f"/api/dlq/{fine.pk}/replay/", "", client=admin)

    assert fixed.status_code == as_arrived.status_code == 201, (fixed.content, as_arrived.content)
    assert fixed.json()["dead_letter"] == fixable.pk
    assert fixed.json()["event"]["payload"] == {"standard_deduction": 5}
    assert as_arrived.json()["event"]["payload"] == {"standard_deduction": 9}
    event = Event.objects.get(envelope_id=fixed.json()["id"])
    assert (event.source, event.publisher_name, event.status) == (Source.REPLAY, "admin", "published")
    fixable.refresh_from_db()
    assert (fixable.status, fixable.replay_event, fixable.replayed_by.username) == ("replayed", event, "admin")
    assert AuditEntry.objects.filter(action="dead_letter.replay", target=f"dead_letter:{fixable.pk}").exists()
    assert bus.xlen(stream_key("tax-policy")) == 2
    assert [letter["id"] for letter in admin.get("/api/dlq/").json()["dead_letters"]] == []


def test_a_replay_that_still_fails_is_422_with_its_errors_and_the_letter_stays_open():
    letter = _letter(-5)

    errors = _errors(_post(f"/api/dlq/{letter.pk}/replay/", {}, client=signed_in("admin")), 422)

    assert errors == [{"path": "/payload/standard_deduction", "message": "must be 0 or more"}]
    letter.refresh_from_db()
    assert letter.status == DeadLetterStatus.OPEN
    assert Event.objects.count() == 0
    not_json = _letter(raw="{oops")
    missing = _errors(_post(f"/api/dlq/{not_json.pk}/replay/", {}, client=signed_in("admin")), 422)
    assert {error["path"] for error in missing} == {"/type", "/payload"}


@pytest.mark.parametrize("who", ["auditor", "policy", "token"])
def test_only_people_with_the_manage_right_may_replay_and_refusals_are_audited(who):
    letter = _letter(-5)
    body = {"payload": {"standard_deduction": 5}}
    if who == "token":
        response = _post(f"/api/dlq/{letter.pk}/replay/", body, _token("admin-feed"))
    else:
        response = _post(f"/api/dlq/{letter.pk}/replay/", body, client=signed_in(who))

    _errors(response, 403)

    letter.refresh_from_db()
    assert letter.status == DeadLetterStatus.OPEN
    assert Event.objects.count() == 0
    refusal = AuditEntry.objects.get(action="dead_letter.replay.refused")
    assert refusal.target == f"dead_letter:{letter.pk}"


def test_a_letter_replayed_or_discarded_already_is_409_and_an_unknown_one_404():
    letter = _letter(-5)
    admin = signed_in("admin")
    body = {"payload": {"standard_deduction": 5}}
    assert _post(f"/api/dlq/{letter.pk}/replay/", body, client=admin).status_code == 201

    again = _errors(_post(f"/api/dlq/{letter.pk}/replay/", body, client=admin), 409)

    assert again == [{"path": "/status", "message": "this dead letter was already replayed"}]
    assert Event.objects.count() == 1
    _errors(_post("/api/dlq/999999/replay/", body, client=admin), 404)
