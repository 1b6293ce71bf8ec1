"""The registry API: topics and types created, versions listed, checked and saved, modes and states set."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from django.test import Client

from busapp.actions.dead_letters import dead_letter_create
from busapp.models import (
    AuditEntry,
    EventType,
    SchemaVersion,
    SchemaVersionRequest,
    SchemaVersionState,
    Source,
    Topic,
)
from tests.support import publish_deduction, signed_in
from tests.test_api import _errors, _get, _post, _token

pytestmark = pytest.mark.usefixtures("demo")

TYPES = "/api/topics/tax-policy/types/"
TAX = "/api/topics/tax-policy/types/tax_policy.updated"
WITHHOLDING = "/api/topics/irs.withholding/types/withholding_table.published"


def _tax_v1() -> dict[str, Any]:
    """Version 1 of tax_policy.updated as its author wrote it (the seed's schemas/tax_policy.json)."""
    authored: dict[str, Any] = SchemaVersion.objects.get(event_type__name="tax_policy.updated", version=1).authored
    return copy.deepcopy(authored)


def _relaxed() -> dict[str, Any]:
    """v1 with the minimum dropped: every event v1 accepted is still accepted (BACKWARD holds)."""
    schema = _tax_v1()
    del schema["properties"]["standard_deduction"]["minimum"]
    return schema


def _note_required() -> dict[str, Any]:
    """v1 with a new required property: every event v1 accepted is refused."""
    schema = _tax_v1()
    schema["required"] = ["standard_deduction", "note"]
    schema["properties"]["note"] = {"type": "string"}
    return schema


WITHHOLDING_BREAK = {"type": "object", "required": ["matrix"], "properties": {"matrix": {"type": "string"}}}
FIRST_SCHEMA = {"type": "object", "required": ["rate"], "properties": {"rate": {"type": "number"}}}


def _admin() -> Client:
    return signed_in("admin")


def _letter(deduction: int) -> None:
    dead_letter_create(
        topic=Topic.objects.get(name="tax-policy"),
        raw=json.dumps({"type": "tax_policy.updated", "payload": {"standard_deduction": deduction}}),
        errors=[{"path": "/payload/standard_deduction", "message": "must be 0 or more"}],
        source=Source.CLI,
        actor="cli:test",
    )


def _versions(name: str = "tax_policy.updated") -> list[int]:
    return list(
        SchemaVersion.objects.filter(event_type__name=name).order_by("version").values_list("version", flat=True)
    )


def _check(body: Any, *, client: Client | None = None, token: str | None = None, base: str = TAX) -> Any:
    return _post(f"{base}/versions/check/", body, token, client=client or (None if token else _admin()))


# Topics


def test_a_bus_admin_creates_a_topic_with_its_first_type_and_version_in_one_request_each_audited() -> None:
    body = {
        "name": "benefits.rates",
        "description": "Benefit rates.",
        "sensitive": True,
        "stream_retention": 5000,
        "event_type": {"name": "rates.published", "description": "New rates.", "schema": FIRST_SCHEMA},
    }

    response = _post("/api/topics/", body, client=_admin())

    assert response.status_code == 201, response.content
    created = response.json()
    assert (created["name"], created["sensitive"], created["can_publish"]) == ("benefits.rates", True, True)
    [kind] = created["event_types"]
    assert kind["name"] == "rates.published"
    assert [(version["version"], version["schema"]) for version in kind["schema_versions"]] == [(1, FIRST_SCHEMA)]
    assert Topic.objects.get(name="benefits.rates").stream_retention == 5000
    targets = set(AuditEntry.objects.filter(actor_name="admin").values_list("action", "target"))
    assert {
        ("topic.create", "topic:benefits.rates"),
        ("event_type.create", "event_type:benefits.rates/rates.published"),
        ("schema_version.create", "schema:benefits.rates/rates.published/v1"),
    } <= targets
    listed = _get("/api/topics/benefits.rates/types/", _token(topics=("benefits.rates",), can_publish=False)).json()
    assert [(kind["name"], kind["version_in_force"]) for kind in listed["event_types"]] == [("rates.published", 1)]


def test_a_topic_alone_takes_only_a_name() -> None:
    response = _post("/api/topics/", {"name": "benefits.rates"}, client=_admin())

    assert response.status_code == 201, response.content
    assert response.json()["event_types"] == []
    assert Topic.objects.get(name="benefits.rates").sensitive is False


@pytest.mark.parametrize(
    ("first_type", "path"),
    [
        ({"name": "rates.published", "schema": {"$ref": "#"}}, "/event_type/schema"),
        ({"name": "rates.published", "schema": {"type": "numeric"}}, "/event_type/schema"),
        ({"name": "Not A Type!", "schema": FIRST_SCHEMA}, "/event_type/name"),
    ],
)
def test_a_topic_whose_first_type_or_schema_is_refused_is_not_created_at_all(first_type: Any, path: str) -> None:
    before = AuditEntry.objects.count()

    errors = _errors(_post("/api/topics/", {"name": "benefits.rates", "event_type": first_type}, client=_admin()), 422)

    assert [error["path"] for error in errors] == [path]
    assert not Topic.objects.filter(name="benefits.rates").exists()
    assert not EventType.objects.filter(topic__name="benefits.rates").exists()
    assert AuditEntry.objects.count() == before, "no audit entry of a topic that was never made"


def test_a_topic_name_against_the_rule_or_taken_is_422_naming_it_and_a_malformed_body_400() -> None:
    admin = _admin()

    bad = _errors(_post("/api/topics/", {"name": "Tax Policy!"}, client=admin), 422)
    taken = _errors(_post("/api/topics/", {"name": "tax-policy"}, client=admin), 422)
    malformed = _errors(_post("/api/topics/", {"name": "ok.topic", "stream_retention": 0}, client=admin), 400)
    not_json = _errors(_post("/api/topics/", "{'name': 1}", client=admin), 400)

    assert [error["path"] for error in bad] == ["/name"]
    assert [error["path"] for error in taken] == ["/name"]
    assert "is taken" in taken[0]["message"]
    assert [error["path"] for error in malformed] == ["/stream_retention"]
    assert "not valid JSON" in not_json[0]["message"]
    assert Topic.objects.count() == 2


@pytest.mark.parametrize("who", ["policy", "auditor", "token"])
def test_only_a_bus_admin_creates_topics_and_each_refusal_is_audited(who: str) -> None:
    token = _token("ci-feed", can_publish=True, can_view=True) if who == "token" else None
    response = _post("/api/topics/", {"name": "benefits.rates"}, token, client=None if token else signed_in(who))

    message = _errors(response, 403)[0]["message"]

    assert ("service tokens may not create topics" if who == "token" else "busapp.add_topic") in message
    assert not Topic.objects.filter(name="benefits.rates").exists()
    refusal = AuditEntry.objects.get(action="write.refused")
    assert (refusal.actor_name, refusal.target) == ("service:ci-feed" if token else who, "path:/api/topics/")
    _errors(Client().post("/api/topics/", "{}", content_type="application/json"), 401)


# Event types


def test_the_types_of_a_topic_are_listed_with_mode_policy_and_the_version_in_force() -> None:
    token = _token(can_publish=False)
    _post(f"{TAX}/versions/", {"schema": _relaxed(), "reason": "relax"}, client=_admin())
    SchemaVersion.objects.filter(version=2).update(state=SchemaVersionState.DISABLED)

    body = _get(TYPES, token).json()

    assert body["topic"] == "tax-policy"
    [kind] = body["event_types"]
    assert (kind["name"], kind["compatibility_mode"], kind["compatibility_policy"], kind["version_in_force"]) == (
        "tax_policy.updated",
        "BACKWARD",
        "STRICT",
        1,
    ), "a disabled v2 is not in force"
    _errors(_get("/api/topics/irs.withholding/types/", token), 403)
    _errors(_get("/api/topics/nope/types/", token), 404)
    _errors(Client().get(TYPES), 401)


def test_a_bus_admin_adds_a_type_with_or_without_its_first_version() -> None:
    admin = _admin()

    bare = _post(TYPES, {"name": "tax_policy.retired"}, client=admin)
    versioned = _post(
        TYPES, {"name": "tax_policy.noted", "description": "A note.", "schema": FIRST_SCHEMA}, client=admin
    )

    assert bare.status_code == 201, bare.content
    assert (bare.json()["name"], bare.json()["version_in_force"]) == ("tax_policy.retired", None)
    assert versioned.status_code == 201, versioned.content
    assert versioned.json()["version_in_force"] == 1
    assert versioned.json()["compatibility_mode"] == "BACKWARD"
    assert _versions("tax_policy.noted") == [1]
    assert AuditEntry.objects.filter(
        action="event_type.create", target="event_type:tax-policy/tax_policy.noted"
    ).exists()


def test_a_type_refused_by_name_or_schema_is_422_and_leaves_nothing() -> None:
    admin = _admin()

    taken = _errors(_post(TYPES, {"name": "tax_policy.updated"}, client=admin), 422)
    bad_schema = _errors(_post(TYPES, {"name": "tax_policy.noted", "schema": {"$ref": "#"}}, client=admin), 422)

    assert [error["path"] for error in taken] == ["/name"]
    assert [error["path"] for error in bad_schema] == ["/schema"]
    assert "$ref" in bad_schema[0]["message"]
    assert not EventType.objects.filter(name="tax_policy.noted").exists()


@pytest.mark.parametrize("who", ["policy", "token"])
def test_only_a_bus_admin_adds_types_and_refusals_are_audited_on_the_topic(who: str) -> None:
    token = _token("ci-feed") if who == "token" else None

    _errors(_post(TYPES, {"name": "tax_policy.noted"}, token, client=None if token else signed_in(who)), 403)

    assert not EventType.objects.filter(name="tax_policy.noted").exists()
    assert AuditEntry.objects.get(action="manage.refused").target == "topic:tax-policy"


# Versions: listed and saved


def test_versions_lists_what_schemas_lists() -> None:
    token = _token(can_publish=False)

    versions = _get(f"{TAX}/versions/", token).json()

    assert versions == _get(f"{TAX}/schemas/", token).json()
    assert [(version["version"], version["state"]) for version in versions["schema_versions"]] == [(1, "enabled")]
    assert versions["schema_versions"][0]["state_changed_at"] is None


def test_a_compatible_version_is_saved_with_its_reason() -> None:
    response = _post(
        f"{TAX}/versions/", {"schema": _relaxed(), "reason": "negative deductions are legal"}, client=_admin()
    )

    assert response.status_code == 201, response.content
    assert (response.json()["version"], response.json()["compatibility"]) == (2, "backward")
    entry = AuditEntry.objects.get(action="schema_version.create", target="schema:tax-policy/tax_policy.updated/v2")
    assert entry.details["reason"] == "negative deductions are legal"


def test_a_breaking_version_needs_declare_break_and_on_a_plain_topic_is_saved_as_a_declared_break() -> None:
    admin = _admin()

    undeclared = _errors(_post(f"{TAX}/versions/", {"schema": _note_required(), "reason": "notes"}, client=admin), 409)
    assert [error["path"] for error in undeclared] == ["/declare_break"]
    assert _versions() == [1]

    declared = _post(
        f"{TAX}/versions/", {"schema": _note_required(), "reason": "notes", "declare_break": True}, client=admin
    )

    assert declared.status_code == 201, declared.content
    assert (declared.json()["version"], declared.json()["compatibility"]) == (2, "none")
    assert _versions() == [1, 2]


def test_a_breaking_version_on_a_sensitive_topic_waits_for_a_second_bus_admin_and_saves_no_version() -> None:
    body = {"schema": WITHHOLDING_BREAK, "reason": "new table shape", "declare_break": True}

    response = _post(f"{WITHHOLDING}/versions/", body, client=_admin())

    assert response.status_code == 202, response.content
    waiting = response.json()
    proposed = SchemaVersionRequest.objects.get()
    assert (waiting["request"], waiting["status"], waiting["reason"]) == (
        proposed.pk,
        "awaiting_approval",
        body["reason"],
    )
    assert waiting["findings"]
    assert waiting["findings"] == proposed.findings
    assert waiting["decide_at"].endswith(f"/versions/requests/{proposed.pk}/")
    assert _versions("withholding_table.published") == [1]
    again = _errors(_post(f"{WITHHOLDING}/versions/", body, client=_admin()), 409)
    assert "already waiting" in again[0]["message"]
    # The old endpoint still says where the four-eyes path is, and saves nothing either.
    old = _errors(
        _post(f"{WITHHOLDING}/schemas/", {"schema": WITHHOLDING_BREAK, "compatibility": "none"}, client=_admin()), 422
    )
    assert "second bus admin" in old[0]["message"]
    assert _versions("withholding_table.published") == [1]


def test_a_version_without_reason_or_with_an_invalid_schema_is_refused_with_its_path() -> None:
    admin = _admin()

    no_reason = _errors(_post(f"{TAX}/versions/", {"schema": _relaxed()}, client=admin), 400)
    blank = _errors(_post(f"{TAX}/versions/", {"schema": _relaxed(), "reason": " "}, client=admin), 400)
    invalid = _errors(_post(f"{TAX}/versions/", {"schema": {"type": "numeric"}, "reason": "x"}, client=admin), 422)

    assert [error["path"] for error in no_reason] == ["/reason"]
    assert [error["path"] for error in blank] == ["/reason"]
    assert [error["path"] for error in invalid] == ["/schema"]
    assert _versions() == [1]


@pytest.mark.parametrize("who", ["policy", "auditor", "token"])
def test_only_a_bus_admin_saves_versions(who: str) -> None:
    token = _token("ci-feed") if who == "token" else None
    client = None if token else signed_in(who)

    _errors(_post(f"{TAX}/versions/", {"schema": _relaxed(), "reason": "x"}, token, client=client), 403)

    assert _versions() == [1]
    assert (
        AuditEntry.objects.get(action="schema_version.create.refused").target == "schema:tax-policy/tax_policy.updated"
    )


# The check of a draft


def test_the_check_of_a_compatible_draft_gives_the_verdict_diff_and_dry_run_and_saves_nothing(bus: Any) -> None:
    publish_deduction(100)
    publish_deduction(200)
    _letter(-5)
    token = _token(can_publish=False)
    audited = AuditEntry.objects.count()

    body = _check({"schema": _relaxed()}, token=token).json()

    assert (body["topic"], body["type"], body["number"]) == ("tax-policy", "tax_policy.updated", 2)
    assert (body["valid"], body["invalid"], body["compatible"], body["needs_declared_break"]) == (True, "", True, False)
    assert (body["mode"], body["policy"], body["findings"], body["against"]) == ("BACKWARD", "STRICT", [], 1)
    [row] = body["diff"]
    assert (row["pointer"], row["before"], row["after"], row["change"]) == (
        "/properties/standard_deduction/minimum",
        "0",
        None,
        "removed",
    )
    assert body["dry_run"] == {
        "letters": 1,
        "letters_passing": 1,
        "events": 2,
        "events_refused": 0,
        "refused_examples": [],
    }
    assert _versions() == [1]
    assert AuditEntry.objects.count() == audited


def test_the_check_of_a_breaking_draft_names_each_finding_and_the_events_it_would_refuse(bus: Any) -> None:
    events = [publish_deduction(100), publish_deduction(200)]

    body = _check({"schema": _note_required()}).json()

    assert (body["valid"], body["compatible"], body["needs_declared_break"], body["needs_approval"]) == (
        True,
        False,
        True,
        False,
    )
    rules = {(finding["pointer"], finding["rule"]) for finding in body["findings"]}
    assert ("/required", "REQUIRED_ATTRIBUTE_ADDED") in rules
    required = next(finding for finding in body["findings"] if finding["rule"] == "REQUIRED_ATTRIBUTE_ADDED")
    assert required["text"].startswith("/required: REQUIRED_ATTRIBUTE_ADDED: ")
    assert required["undecided"] is False
    assert {row["pointer"] for row in body["diff"]} >= {"/required", "/properties/note"}
    assert next(row for row in body["diff"] if row["pointer"] == "/required")["breaks"] != ""
    dry_run = body["dry_run"]
    assert (dry_run["events"], dry_run["events_refused"]) == (2, 2)
    assert {example["id"] for example in dry_run["refused_examples"]} == {event.envelope_id for event in events}
    assert all("note" in example["error"] for example in dry_run["refused_examples"])
    assert _versions() == [1]


def test_a_breaking_draft_on_a_sensitive_topic_is_said_to_need_approval() -> None:
    body = _check({"schema": WITHHOLDING_BREAK}, base=WITHHOLDING).json()

    assert (body["compatible"], body["needs_declared_break"], body["needs_approval"]) == (False, True, True)


@pytest.mark.parametrize(
    ("schema", "said"),
    [
        ({"type": "object", "properties": {"code": {"type": "string", "pattern": "(a"}}}, "/properties/code/pattern"),
        ({"$ref": "#"}, "$ref"),
        ({"type": "object", "description": "x" * (300 * 1024)}, "256 KiB"),
    ],
)
def test_an_invalid_draft_is_200_with_valid_false_and_the_reason_naming_where(schema: Any, said: str) -> None:
    response = _check({"schema": schema})

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["valid"], body["compatible"], body["needs_declared_break"]) == (False, False, False)
    assert said in body["invalid"]
    assert (body["findings"], body["diff"], body["dry_run"], body["against"]) == ([], [], None, None)
    assert _versions() == [1]


def test_the_check_compares_with_the_version_asked_for_and_refuses_one_that_does_not_exist() -> None:
    _post(f"{TAX}/versions/", {"schema": _relaxed(), "reason": "relax"}, client=_admin())

    against_v1 = _check({"schema": _relaxed(), "against": 1}).json()
    in_force = _check({"schema": _relaxed()}).json()
    missing = _errors(_check({"schema": _relaxed(), "against": 9}), 422)

    assert (against_v1["against"], len(against_v1["diff"])) == (1, 1)
    assert (in_force["against"], in_force["diff"]) == (2, [])
    assert [error["path"] for error in missing] == ["/against"]


def test_the_check_refuses_a_malformed_body_with_its_path() -> None:
    assert [error["path"] for error in _errors(_check({}), 400)] == ["/schema"]
    assert [error["path"] for error in _errors(_check({"schema": []}), 400)] == ["/schema"]
    assert [error["path"] for error in _errors(_check({"schema": {}, "against": "v1"}), 400)] == ["/against"]
    assert "not valid JSON" in _errors(_check("[1,"), 400)[0]["message"]


def test_the_check_is_for_whoever_may_view_the_topic_and_a_token_refers_only_to_its_own_topic() -> None:
    viewer, publisher = _token("ci", can_publish=False), _token("feed", can_view=False)
    foreign = {
        "type": "object",
        "properties": {"table": {"$ref": "urn:hms:schema:irs.withholding/withholding_table.published/v1"}},
    }
    own = {"allOf": [{"$ref": "urn:hms:schema:tax-policy/tax_policy.updated/v1"}]}

    assert _check({"schema": _relaxed()}, token=viewer).status_code == 200
    assert _check({"schema": own}, token=viewer).json()["valid"] is True
    refused = _errors(_check({"schema": foreign}, token=viewer), 403)
    assert [error["path"] for error in refused] == ["/schema/properties/table/$ref"]
    assert _check({"schema": foreign}, client=signed_in("policy")).json()["valid"] is True
    _errors(_check({"schema": _relaxed()}, token=publisher), 403)
    _errors(_check({"schema": _relaxed()}, token=viewer, base=WITHHOLDING), 403)
    _errors(Client().post(f"{TAX}/versions/check/", "{}", content_type="application/json"), 401)
    _errors(_check({"schema": _relaxed()}, base="/api/topics/tax-policy/types/nope"), 404)


# Compatibility modes


def test_a_bus_admin_sets_the_mode_and_policy_with_a_reason_and_it_is_audited() -> None:
    response = _post(
        f"{TAX}/compatibility/", {"mode": "FULL", "policy": "LENIENT", "reason": "both ways"}, client=_admin()
    )

    assert response.status_code == 200, response.content
    assert (response.json()["compatibility_mode"], response.json()["compatibility_policy"]) == ("FULL", "LENIENT")
    kind = EventType.objects.get(name="tax_policy.updated")
    assert (kind.compatibility_mode, kind.compatibility_policy) == ("FULL", "LENIENT")
    entry = AuditEntry.objects.get(action="event_type.compatibility")
    assert entry.details["reason"] == "both ways"
    kept = _post(f"{TAX}/compatibility/", {"mode": "NONE", "reason": "anything"}, client=_admin())
    assert (kept.json()["compatibility_mode"], kept.json()["compatibility_policy"]) == ("NONE", "LENIENT")


def test_an_unknown_or_unchanged_mode_is_refused_naming_mode() -> None:
    admin = _admin()

    unknown = _errors(_post(f"{TAX}/compatibility/", {"mode": "SIDEWAYS", "reason": "x"}, client=admin), 400)
    bad_policy = _errors(
        _post(f"{TAX}/compatibility/", {"mode": "FULL", "policy": "LAX", "reason": "x"}, client=admin), 400
    )
    unchanged = _errors(_post(f"{TAX}/compatibility/", {"mode": "BACKWARD", "reason": "x"}, client=admin), 409)
    no_reason = _errors(_post(f"{TAX}/compatibility/", {"mode": "FULL"}, client=admin), 400)

    assert [error["path"] for error in unknown] == ["/mode"]
    assert "SIDEWAYS" in unknown[0]["message"]
    assert [error["path"] for error in bad_policy] == ["/policy"]
    assert [error["path"] for error in unchanged] == ["/mode"]
    assert [error["path"] for error in no_reason] == ["/reason"]
    assert EventType.objects.get(name="tax_policy.updated").compatibility_mode == "BACKWARD"


@pytest.mark.parametrize("who", ["policy", "auditor", "token"])
def test_only_a_bus_admin_sets_the_mode_and_refusals_are_audited(who: str) -> None:
    token = _token("ci-feed") if who == "token" else None
    body = {"mode": "NONE", "reason": "x"}

    _errors(_post(f"{TAX}/compatibility/", body, token, client=None if token else signed_in(who)), 403)

    assert EventType.objects.get(name="tax_policy.updated").compatibility_mode == "BACKWARD"
    refusal = AuditEntry.objects.get(action="event_type.compatibility.refused")
    assert refusal.target == "event_type:tax-policy/tax_policy.updated"


# Version states


def test_a_bus_admin_deprecates_a_version_with_a_reason_and_it_is_audited() -> None:
    response = _post(f"{TAX}/versions/1/state/", {"state": "deprecated", "reason": "v2 is coming"}, client=_admin())

    assert response.status_code == 200, response.content
    assert (response.json()["version"], response.json()["state"]) == (1, "deprecated")
    assert response.json()["state_changed_at"] is not None
    entry = AuditEntry.objects.get(action="schema_version.state")
    assert (entry.target, entry.details["state"], entry.details["reason"]) == (
        "schema:tax-policy/tax_policy.updated/v1",
        ["enabled", "deprecated"],
        "v2 is coming",
    )


def test_a_bad_state_an_unknown_version_and_the_last_usable_one_are_refused() -> None:
    admin = _admin()

    bad = _errors(_post(f"{TAX}/versions/1/state/", {"state": "retired", "reason": "x"}, client=admin), 400)
    unknown = _errors(_post(f"{TAX}/versions/7/state/", {"state": "deprecated", "reason": "x"}, client=admin), 404)
    last = _errors(_post(f"{TAX}/versions/1/state/", {"state": "disabled", "reason": "x"}, client=admin), 409)
    same = _errors(_post(f"{TAX}/versions/1/state/", {"state": "enabled", "reason": "x"}, client=admin), 409)

    assert [error["path"] for error in bad] == ["/state"]
    assert "has no version 7; it has v1" in unknown[0]["message"]
    assert [error["path"] for error in last] == ["/state"]
    assert "only version" in last[0]["message"]
    assert [error["path"] for error in same] == ["/state"]
    assert SchemaVersion.objects.get(event_type__name="tax_policy.updated").state == "enabled"


@pytest.mark.parametrize("who", ["policy", "auditor", "token"])
def test_only_a_bus_admin_changes_a_state_and_refusals_are_audited(who: str) -> None:
    token = _token("ci-feed") if who == "token" else None
    body = {"state": "deprecated", "reason": "x"}

    _errors(_post(f"{TAX}/versions/1/state/", body, token, client=None if token else signed_in(who)), 403)

    assert SchemaVersion.objects.get(event_type__name="tax_policy.updated").state == "enabled"
    refusal = AuditEntry.objects.get(action="schema_version.state.refused")
    assert refusal.target == "schema:tax-policy/tax_policy.updated/v1"


# Limits and the document


def test_a_registry_body_over_the_memory_limit_is_413_before_it_is_read(settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    big = _relaxed() | {"description": "x" * 20_000}

    for path in ("/api/topics/", TYPES, f"{TAX}/versions/", f"{TAX}/versions/check/", f"{TAX}/compatibility/"):
        errors = _errors(_post(path, {"schema": big, "name": "x", "reason": "x"}, client=_admin()), 413)
        assert "the limit is 10000 bytes" in errors[0]["message"], path
    assert _versions() == [1]


def test_the_openapi_document_describes_every_registry_operation() -> None:
    document = signed_in("policy").get("/api/schema/?format=json").json()

    operations = {
        operation["operationId"]
        for path in document["paths"].values()
        for operation in path.values()
        if isinstance(operation, dict) and "operationId" in operation
    }

    assert {
        "topic_create",
        "event_type_list",
        "event_type_create",
        "version_list",
        "version_propose",
        "version_check",
        "event_type_compatibility_set",
        "version_state_set",
    } <= operations


def test_a_path_that_matches_no_route_is_404_in_the_error_shape_even_with_a_newline_in_it() -> None:
    response = _post("/api/topics/tax-policy/types/a%0Ab/versions/1.5/state/", {}, client=_admin())

    assert "no API endpoint at" in _errors(response, 404)[0]["message"]


def test_the_check_names_the_mode_it_ran_under_backward_on_a_sensitive_topic_set_to_none() -> None:
    EventType.objects.filter(name="withholding_table.published").update(compatibility_mode="NONE")

    body = _check({"schema": WITHHOLDING_BREAK}, base=WITHHOLDING).json()

    assert (body["mode"], body["needs_declared_break"], body["needs_approval"]) == ("BACKWARD", True, True)
