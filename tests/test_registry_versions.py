"""A type's versions from the dashboard: the check page, saving with a reason, states, four eyes when sensitive."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone
from django.utils.html import strip_tags

from busapp.actions.dead_letters import dead_letter_create
from busapp.actions.registry import (
    schema_version_create,
    schema_version_propose,
    schema_version_request_decide,
    schema_version_state_set,
)
from busapp.errors import ActionRefusedError, EventRejectedError, FieldError, RightRefusedError, SchemaInvalidError
from busapp.models import (
    AuditEntry,
    EventType,
    SchemaVersion,
    SchemaVersionRequest,
    Source,
    Topic,
)
from busapp.permissions import Role
from busapp.version_counts import version_counts_advance, version_event_counts
from busapp.version_drafts import version_draft_check
from tests.conftest import DEMO_PASSWORD
from tests.support import publish_deduction

pytestmark = pytest.mark.usefixtures("demo")

TAX = "/topics/tax-policy/types/tax_policy.updated/versions/new/"
WITHHOLDING = "/topics/irs.withholding/types/withholding_table.published/versions/new/"
DEDUCTION = {"type": "number", "minimum": 0, "title": "Standard deduction"}


def _client(username: str) -> Client:
    client = Client()
    client.force_login(User.objects.get(username=username))
    return client


@pytest.fixture
def admin2() -> User:
    """A second bus admin, for four-eyes decisions."""
    person = User.objects.create_user("admin2", password=DEMO_PASSWORD, is_staff=True)
    person.groups.add(Group.objects.get(name=Role.BUS_ADMINS.value))
    return User.objects.get(username="admin2")


def _text(response: Any) -> str:
    return " ".join(strip_tags(response.content.decode()).split())


def _tax() -> EventType:
    return EventType.objects.select_related("topic").get(name="tax_policy.updated")


def _withholding() -> EventType:
    return EventType.objects.select_related("topic").get(name="withholding_table.published")


def _tax_schema(**properties: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["standard_deduction"],
        "properties": {"standard_deduction": DEDUCTION, **properties},
    }


def test_the_editor_starts_from_the_version_in_force_and_check_saves_nothing() -> None:
    admin = _client("admin")

    page = admin.get(TAX)
    checked = admin.post(TAX, {"schema": json.dumps(_tax_schema()), "action": "check"})

    assert page.status_code == 200
    assert "&quot;standard_deduction&quot;" in page.content.decode()  # the textarea holds v1's text
    assert checked.status_code == 200
    text = _text(checked)
    assert "Check of v2" in text
    assert "valid Draft 2020-12" in text
    assert "compatible under BACKWARD (STRICT)" in text
    assert "The publish form under v2" in text
    assert SchemaVersion.objects.filter(event_type=_tax()).count() == 1


def test_a_breaking_draft_shows_each_finding_with_its_rule_and_the_diff_marks_whom_it_breaks() -> None:
    draft = _tax_schema(credit_cap={"type": "number"})

    text = _text(_client("admin").post(TAX, {"schema": json.dumps(draft), "action": "check"}))

    assert "Breaks BACKWARD (STRICT): 1 finding." in text
    assert "/properties/credit_cap: PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL" in text
    assert "events valid under v1 are refused" in text
    assert "/properties/credit_cap (absent)" in text
    assert "writers" in text
    assert "Declare a breaking change" in text


def test_an_invalid_draft_names_the_pointer_and_the_rule_and_not_json_names_where() -> None:
    admin = _client("admin")

    bad_pattern = admin.post(
        TAX, {"schema": json.dumps({"type": "object", "properties": {"a": {"pattern": "(a"}}}), "action": "check"}
    )
    not_json = admin.post(TAX, {"schema": '{"type": "object",', "action": "check"})
    cycle = admin.post(TAX, {"schema": json.dumps({"$ref": "#"}), "action": "check"})

    assert "Not a valid schema:" in _text(bad_pattern)
    assert "/properties/a/pattern" in _text(bad_pattern)
    assert "is not valid JSON" in _text(not_json)
    assert "Not a valid schema:" in _text(cycle)
    assert "$ref" in _text(cycle)
    assert SchemaVersion.objects.filter(event_type=_tax()).count() == 1


def test_a_schema_over_256_kib_is_refused_before_anything_else() -> None:
    big = {"type": "object", "description": "x" * (260 * 1024)}

    check = version_draft_check(event_type=_tax(), schema=big)

    assert "a schema may be at most 256 KiB" in check.invalid
    assert check.dry_run is None


def test_saving_a_compatible_version_needs_a_reason_and_audits_it() -> None:
    admin = _client("admin")
    body = {"schema": json.dumps(_tax_schema()), "action": "save"}

    refused = admin.post(TAX, {**body, "reason": " "})
    saved = admin.post(TAX, {**body, "reason": "titles for the form"})

    assert refused.status_code == 400
    assert "reason: is required" in _text(refused)
    assert saved.status_code == 302
    version = SchemaVersion.objects.get(event_type=_tax(), version=2)
    assert version.created_by is not None
    assert (version.compatibility, version.created_by.username) == ("backward", "admin")
    assert json.loads(version.source) == _tax_schema()
    entry = AuditEntry.objects.get(action="schema_version.create", target="schema:tax-policy/tax_policy.updated/v2")
    assert entry.details["reason"] == "titles for the form"


def test_a_breaking_version_on_an_ordinary_topic_is_saved_only_when_declared() -> None:
    admin = _client("admin")
    draft = {"type": "object", "properties": {"standard_deduction": {"type": "integer"}}}
    body = {"schema": json.dumps(draft), "action": "save", "reason": "whole dollars only"}

    undeclared = admin.post(TAX, body)
    declared = admin.post(TAX, {**body, "declare_break": "yes"})

    assert undeclared.status_code == 400
    assert "declare_break: breaks BACKWARD (1 finding)" in _text(undeclared)
    assert declared.status_code == 302
    version = SchemaVersion.objects.get(event_type=_tax(), version=2)
    assert version.compatibility == "none"
    entry = AuditEntry.objects.get(action="schema_version.create", target__endswith="/v2")
    assert any("TYPE_NARROWED" in finding for finding in entry.details["findings"])


def _breaking_withholding() -> dict[str, Any]:
    schema = json.loads(SchemaVersion.objects.get(event_type=_withholding()).source)
    schema["required"] = [*schema["required"], "filing_status"]
    return schema


def test_on_a_sensitive_topic_a_breaking_version_waits_for_a_second_bus_admin(admin2: User) -> None:
    admin = _client("admin")
    body = {"schema": json.dumps(_breaking_withholding()), "action": "save", "reason": "status is now required"}

    response = admin.post(WITHHOLDING, {**body, "declare_break": "yes"})

    proposed = SchemaVersionRequest.objects.get()
    assert response.status_code == 302
    assert response["Location"].endswith(f"/versions/requests/{proposed.pk}/")
    assert SchemaVersion.objects.filter(event_type=_withholding()).count() == 1
    assert "REQUIRED_ATTRIBUTE_ADDED" in " ".join(proposed.findings)
    own_page = _text(admin.get(response["Location"]))
    assert "You cannot approve or reject your own proposal" in own_page
    with pytest.raises(RightRefusedError, match="nobody may approve or reject their own request"):
        schema_version_request_decide(
            request_id=proposed.pk, approve=True, reason="me", actor=User.objects.get(username="admin")
        )

    decided = _client("admin2").post(
        f"{response['Location']}decide/", {"decision": "approve", "reason": "agreed with payroll services"}
    )

    assert decided.status_code == 302
    version = SchemaVersion.objects.get(event_type=_withholding(), version=2)
    assert version.created_by is not None
    assert (version.compatibility, version.created_by.username) == ("none", "admin")
    actions = list(AuditEntry.objects.filter(target__contains="withholding_table").values_list("action", "actor_name"))
    assert ("schema_version.request", "admin") in actions
    assert ("schema_version.create", "admin2") in actions
    assert ("schema_version.approve", "admin2") in actions


def test_a_declared_break_on_a_sensitive_topic_is_refused_on_every_other_path() -> None:
    with pytest.raises(SchemaInvalidError, match="needs a second bus admin's approval"):
        schema_version_create(
            event_type=_withholding(), schema=_breaking_withholding(), actor="cli:test", compatibility="none"
        )


def test_a_rejected_breaking_version_saves_nothing(admin2: User) -> None:
    proposed = schema_version_propose(
        event_type=_withholding(),
        schema=_breaking_withholding(),
        source=json.dumps(_breaking_withholding()),
        reason="status required",
        declare_break=True,
        actor=User.objects.get(username="admin"),
    )
    assert isinstance(proposed, SchemaVersionRequest)

    schema_version_request_decide(request_id=proposed.pk, approve=False, reason="payroll not ready", actor=admin2)

    assert SchemaVersion.objects.filter(event_type=_withholding()).count() == 1
    with pytest.raises(ActionRefusedError, match="already rejected"):
        schema_version_request_decide(request_id=proposed.pk, approve=True, reason="after all", actor=admin2)


def test_policy_staff_cannot_open_the_editor_and_a_refused_save_is_audited() -> None:
    policy = _client("policy")

    assert policy.get(TAX).status_code == 403
    assert policy.post(TAX, {"schema": "{}", "action": "save", "reason": "x"}).status_code == 403
    assert AuditEntry.objects.get(action="schema_version.create.refused").actor_name == "policy"


def test_a_deprecated_version_is_accepted_with_a_warning_and_a_disabled_one_is_refused(bus: Any) -> None:
    admin = User.objects.get(username="admin")
    v1 = SchemaVersion.objects.get(event_type=_tax())
    v2 = schema_version_create(event_type=_tax(), schema=_tax_schema(), actor="cli:test")

    schema_version_state_set(version=v2, state="deprecated", reason="v3 is coming", actor=admin)
    form = _text(_client("policy").get("/topics/tax-policy/publish/"))
    api = _client("policy").post(
        "/api/topics/tax-policy/events/",
        {"type": "tax_policy.updated", "payload": {"standard_deduction": 15000}},
        content_type="application/json",
    )

    assert "Schema v2 of tax_policy.updated is deprecated" in form
    assert api.status_code in (201, 202)
    assert api["Deprecation"].startswith("@")
    assert api.json()["deprecated"][0]["schema_version"] == 2

    schema_version_state_set(version=v2, state="disabled", reason="withdrawn", actor=admin)
    assert publish_deduction(1).schema_version_id == v1.pk  # the newest version not disabled
    with pytest.raises(ActionRefusedError, match="the only version publishers may use"):
        schema_version_state_set(version=v1, state="disabled", reason="all off", actor=admin)
    entry = AuditEntry.objects.filter(action="schema_version.state").order_by("pk").last()
    assert entry is not None
    assert entry.details == {"state": ["deprecated", "disabled"], "reason": "withdrawn"}


def test_only_bus_admins_change_states_and_with_a_reason() -> None:
    version = SchemaVersion.objects.get(event_type=_tax())

    refused = _client("policy").post(
        "/topics/tax-policy/types/tax_policy.updated/versions/state/",
        {"version": "1", "state": "deprecated", "reason": "x"},
    )

    assert refused.status_code == 403
    with pytest.raises(ActionRefusedError, match="is required"):
        schema_version_state_set(
            version=version, state="deprecated", reason="", actor=User.objects.get(username="admin")
        )
    with pytest.raises(ActionRefusedError, match="is not a state"):
        schema_version_state_set(version=version, state="retired", reason="x", actor=User.objects.get(username="admin"))
    version.refresh_from_db()
    assert version.state == "enabled"


def test_the_dry_run_counts_dead_letters_that_would_pass_and_recent_events_it_would_refuse(bus: Any) -> None:
    topic = Topic.objects.get(name="tax-policy")
    for text in ("12", "-5", "many"):
        envelope = {"id": f"x-{text}", "type": "tax_policy.updated", "payload": {"standard_deduction": text}}
        errors: list[FieldError] = [{"path": "/payload/standard_deduction", "message": "is not of type 'number'"}]
        letter = dead_letter_create(topic=topic, raw=json.dumps(envelope), errors=errors, source=Source.API, actor="t")
        letter.event_type_name = "tax_policy.updated"
        letter.save(update_fields=["event_type_name"])
    for deduction in (100, 20000, 30000):
        publish_deduction(deduction)
    strings = _tax_schema()
    strings["properties"]["standard_deduction"] = {"type": "string", "pattern": "^[0-9]+$"}

    check = version_draft_check(event_type=_tax(), schema=strings)

    assert check.dry_run is not None
    assert (check.dry_run.letters, check.dry_run.letters_passing) == (3, 1)
    assert (check.dry_run.events, check.dry_run.events_refused) == (3, 3)
    assert check.dry_run.refused_examples[0][1].startswith("/payload/standard_deduction")


def test_the_topic_page_counts_events_per_version_before_and_after_the_worker_counts(bus: Any) -> None:
    later = timezone.now() + dt.timedelta(minutes=5)
    v1 = SchemaVersion.objects.get(event_type=_tax())
    publish_deduction(1)
    publish_deduction(2)
    v2 = schema_version_create(event_type=_tax(), schema=_tax_schema(), actor="cli:test")
    publish_deduction(3)

    before = version_event_counts([v1, v2])
    added = version_counts_advance(now=later)
    after = version_event_counts([v1, v2])

    assert before == after == {v1.pk: 2, v2.pk: 1}
    assert added == 3
    assert version_counts_advance(now=later) == 0
    page = _text(_client("admin").get("/topics/tax-policy/"))
    assert "v2 in force enabled 1 against the mode" in page
    assert "v1 enabled 2 against the mode" in page


def test_a_tap_envelope_naming_a_disabled_version_is_dead_lettered_naming_the_version_to_use(bus: Any) -> None:
    from busapp.selectors import ActiveVersions, schema_version_active

    v1 = SchemaVersion.objects.get(event_type=_tax())
    schema_version_create(event_type=_tax(), schema=_tax_schema(), actor="cli:test")
    schema_version_state_set(version=v1, state="disabled", reason="v2 only", actor=User.objects.get(username="admin"))
    in_force = schema_version_active(topic="tax-policy", event_type="tax_policy.updated")

    errors = ActiveVersions().disabled_errors(in_force, 1)

    assert errors == [
        {"path": "/schema_version", "message": "v1 of tax_policy.updated is disabled: publish against v2"}
    ]
    assert ActiveVersions().disabled_errors(in_force, 7) == []


def test_publishing_with_every_version_disabled_says_so() -> None:
    SchemaVersion.objects.filter(event_type=_tax()).update(state="disabled")

    with pytest.raises(EventRejectedError, match="every one is disabled"):
        publish_deduction(1)


def test_the_worker_counts_a_slice_at_a_time_and_never_events_younger_than_the_horizon(
    bus: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import busapp.version_counts

    monkeypatch.setattr(busapp.version_counts, "COUNT_SLICE", 2)
    v1 = SchemaVersion.objects.get(event_type=_tax())
    for deduction in range(5):
        publish_deduction(deduction)

    assert version_counts_advance() == 0  # every event is younger than two minutes
    later = timezone.now() + dt.timedelta(minutes=5)
    steps = [version_counts_advance(now=later) for _ in range(4)]

    assert steps == [2, 2, 1, 0]
    assert version_event_counts([v1]) == {v1.pk: 5}


def test_mode_none_on_a_sensitive_topic_still_sends_a_breaking_version_to_a_second_bus_admin() -> None:
    admin = User.objects.get(username="admin")
    EventType.objects.filter(pk=_withholding().pk).update(compatibility_mode="NONE")

    with pytest.raises(SchemaInvalidError, match="not compatible under BACKWARD"):
        schema_version_create(event_type=_withholding(), schema=_breaking_withholding(), actor="cli:test")
    proposed = schema_version_propose(
        event_type=_withholding(),
        schema=_breaking_withholding(),
        source=json.dumps(_breaking_withholding()),
        reason="status required",
        declare_break=True,
        actor=admin,
    )

    assert isinstance(proposed, SchemaVersionRequest)
    assert SchemaVersion.objects.filter(event_type=_withholding()).count() == 1
