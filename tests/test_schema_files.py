"""Schema-as-code both ways: sync_schemas --check / --dry-run, a file's mode and policy, export_schemas' round trip."""

import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from busapp.actions.registry import (
    event_type_compatibility_set,
    event_type_create,
    schema_version_create,
    schema_version_state_set,
    topic_create,
)
from busapp.models import AuditEntry, Compatibility, EventType, SchemaVersion, Topic
from tests.support import manage

REFUND = {
    "x-hms-topic": "irs.refunds",
    "x-hms-event-type": "refund.issued",
    "type": "object",
    "required": ["amount"],
    "properties": {"amount": {"type": "number"}},
    "additionalProperties": False,
}
# Breaks BACKWARD twice: a new required property, and amount's type changed.
REFUND_BREAKING = {
    **REFUND,
    "required": ["amount", "currency"],
    "properties": {"amount": {"type": "string"}, "currency": {"type": "string"}},
}
# An optional property added to a closed object: BACKWARD keeps it, FORWARD (and FULL) do not.
REFUND_WITH_CURRENCY = {**REFUND, "properties": {"amount": {"type": "number"}, "currency": {"type": "string"}}}
BREAKING_FINDINGS = [
    "refund.json: /required: REQUIRED_ATTRIBUTE_ADDED: 'currency' is required now: events valid under v1 are refused"
    " (events already sent, publishers still on it)",
    "refund.json: /properties/amount/type: TYPE_CHANGED: number before, string now: events valid under v1 are"
    " refused (events already sent, publishers still on it)",
]


def _write(folder, name, schema):
    (folder / name).write_text(json.dumps(schema), encoding="utf-8")


def _sync(folder, *options):
    """Run sync_schemas; its output."""
    out = io.StringIO()
    call_command("sync_schemas", folder, *options, stdout=out)
    return out.getvalue()


def _refused(folder, *options):
    """Run sync_schemas expecting a refusal: (return code, message, output)."""
    out = io.StringIO()
    with pytest.raises(CommandError) as refused:
        call_command("sync_schemas", folder, *options, stdout=out)
    return refused.value.returncode, str(refused.value), out.getvalue()


def _registry_state():
    """Everything a sync could change: topics, types with their modes, versions, audit entries."""
    return (
        list(Topic.objects.values_list("name", flat=True)),
        list(EventType.objects.values_list("name", "compatibility_mode", "compatibility_policy")),
        list(SchemaVersion.objects.values_list("event_type__name", "version", "fingerprint", "state")),
        AuditEntry.objects.count(),
    )


@pytest.fixture
def refund_v1(db, tmp_path):
    """irs.refunds/refund.issued v1 synced from tmp_path/refund.json (BACKWARD, STRICT)."""
    _write(tmp_path, "refund.json", REFUND)
    _sync(tmp_path)
    return tmp_path


def test_check_of_clean_files_exits_zero_and_changes_nothing(refund_v1):
    _write(refund_v1, "refund.json", REFUND_WITH_CURRENCY)
    _write(refund_v1, "payment.json", {"x-hms-topic": "irs.payments", "x-hms-event-type": "payment.sent"})
    before = _registry_state()

    output = _sync(refund_v1, "--check")

    assert output.splitlines() == ["2 file(s) checked: all valid and compatible with their types' modes"]
    assert _registry_state() == before


def test_check_of_a_breaking_file_exits_one_prints_every_finding_and_changes_nothing(refund_v1):
    _write(refund_v1, "refund.json", {**REFUND_BREAKING, "x-hms-compatibility": "FULL"})
    before = _registry_state()

    code, message, output = _refused(refund_v1, "--check")

    assert code == 1
    assert "4 problem(s) in 1 of 1 file(s); nothing was changed" in message
    forward = [  # FULL: the two backward findings, and two for subscribers still on v1
        "refund.json: /properties/amount/type: TYPE_CHANGED: string before, number now: subscribers still"
        " validating with v1 refuse events valid under the new version",
        "refund.json: /properties: PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL: 'currency' removed from a closed"
        " object: values carrying it are refused: subscribers still validating with v1 refuse events valid under"
        " the new version",
    ]
    assert output.splitlines() == BREAKING_FINDINGS + forward
    assert _registry_state() == before  # the file's mode (FULL) was not applied either: no audit entry


def test_check_reports_every_file_not_only_the_first(refund_v1):
    _write(refund_v1, "refund.json", REFUND_BREAKING)
    _write(refund_v1, "a_invalid.json", {**REFUND, "x-hms-event-type": "refund.voided", "minProperties": -1})
    _write(refund_v1, "b_sideways.json", {**REFUND, "x-hms-event-type": "refund.held", "x-hms-compatibility": "X"})

    code, message, output = _refused(refund_v1, "--check")

    assert code == 1
    assert "4 problem(s) in 3 of 3 file(s)" in message
    assert "a_invalid.json: not a valid JSON Schema (Draft 2020-12) at /minProperties" in output
    assert 'b_sideways.json: /x-hms-compatibility: "X" is not a compatibility mode' in output
    assert set(BREAKING_FINDINGS) <= set(output.splitlines())
    assert (Topic.objects.count(), SchemaVersion.objects.count()) == (1, 1)


@pytest.mark.usefixtures("demo_committed")
def test_check_in_a_ci_pipeline_exits_one_on_a_break_and_zero_once_it_is_mended(tmp_path, suite_redis):
    tax = {
        "x-hms-topic": "tax-policy",
        "x-hms-event-type": "tax_policy.updated",
        "type": "object",
        "properties": {"standard_deduction": {"type": "string"}},
    }
    _write(tmp_path, "tax_policy.json", tax)

    breaking = manage("sync_schemas", str(tmp_path), "--check", redis_url=suite_redis.url())
    tax["properties"]["standard_deduction"] = {"type": "number", "minimum": 0}
    tax["required"] = ["standard_deduction"]
    _write(tmp_path, "tax_policy.json", tax)
    mended = manage("sync_schemas", str(tmp_path), "--check", redis_url=suite_redis.url())

    assert breaking.returncode == 1, breaking.stderr
    assert "tax_policy.json: /properties/standard_deduction/type: TYPE_CHANGED" in breaking.stdout
    assert "CommandError: " in breaking.stderr
    assert mended.returncode == 0, mended.stdout + mended.stderr
    assert SchemaVersion.objects.filter(event_type__name="tax_policy.updated").count() == 1


def test_dry_run_prints_the_plan_and_changes_nothing(refund_v1):
    _write(refund_v1, "refund.json", {**REFUND_WITH_CURRENCY, "x-hms-compatibility": "BACKWARD_TRANSITIVE"})
    payment = {
        "x-hms-topic": "irs.payments",
        "x-hms-event-type": "payment.sent",
        "x-hms-compatibility": "FULL",
        "x-hms-compatibility-policy": "LENIENT",
    }
    _write(refund_v1, "payment.json", payment)
    before = _registry_state()

    output = _sync(refund_v1, "--dry-run")

    assert output.splitlines() == [
        "dry run: the plan; nothing is saved",
        "payment.json: topic irs.payments created",
        "payment.json: event type irs.payments/payment.sent created (FULL, LENIENT)",
        "payment.json: irs.payments/payment.sent v1 created",
        "refund.json: irs.refunds/refund.issued mode BACKWARD (STRICT) -> BACKWARD_TRANSITIVE (STRICT)",
        "refund.json: irs.refunds/refund.issued v2 created",
        "2 file(s) checked: nothing was saved (dry run)",
    ]
    assert _registry_state() == before


def test_dry_run_of_a_breaking_file_shows_the_refusal_and_exits_one(refund_v1):
    _write(refund_v1, "refund.json", REFUND_BREAKING)
    before = _registry_state()

    code, _, output = _refused(refund_v1, "--dry-run")

    assert code == 1
    lines = output.splitlines()
    assert "refund.json: irs.refunds/refund.issued v2 refused (2 problem(s)):" in lines
    assert [f"  {finding}" for finding in BREAKING_FINDINGS] == lines[-2:]
    assert _registry_state() == before


def test_a_files_mode_and_policy_are_applied_and_audited_without_a_new_version(refund_v1):
    settings = {"x-hms-compatibility": "FULL_TRANSITIVE", "x-hms-compatibility-policy": "LENIENT"}
    _write(refund_v1, "refund.json", {**REFUND, **settings})

    output = _sync(refund_v1, "--as", "cli:schema-repo-ci")
    again = _sync(refund_v1)

    assert output.splitlines() == [
        "refund.json: irs.refunds/refund.issued mode BACKWARD (STRICT) -> FULL_TRANSITIVE (LENIENT)",
        "refund.json: irs.refunds/refund.issued unchanged (v1)",
    ]
    assert again.splitlines() == ["refund.json: irs.refunds/refund.issued unchanged (v1)"]
    event_type = EventType.objects.get()
    assert (event_type.compatibility_mode, event_type.compatibility_policy) == ("FULL_TRANSITIVE", "LENIENT")
    assert SchemaVersion.objects.count() == 1
    entry = AuditEntry.objects.get(action="event_type.compatibility")
    assert entry.actor_name == "cli:schema-repo-ci"
    assert entry.details == {
        "mode": ["BACKWARD", "FULL_TRANSITIVE"],
        "policy": ["STRICT", "LENIENT"],
        "reason": f"set by {refund_v1 / 'refund.json'}",
    }


def test_a_new_type_gets_its_files_mode_and_the_stored_schema_leaves_the_mode_out(db, tmp_path):
    _write(tmp_path, "refund.json", {**REFUND, "x-hms-compatibility": "FORWARD"})

    _sync(tmp_path)

    event_type = EventType.objects.get()
    assert (event_type.compatibility_mode, event_type.compatibility_policy) == ("FORWARD", "STRICT")
    assert SchemaVersion.objects.get().schema == REFUND
    created = AuditEntry.objects.get(action="event_type.create")
    assert created.details == {"mode": "FORWARD", "policy": "STRICT"}


def test_a_files_new_mode_applies_before_its_new_version_is_checked(refund_v1):
    _write(refund_v1, "refund.json", {**REFUND_WITH_CURRENCY, "x-hms-compatibility": "FULL"})

    code, message, _ = _refused(refund_v1)

    assert code == 1
    assert "refund.json: /properties: PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL" in message
    assert "nothing was saved" in message
    assert EventType.objects.get().compatibility_mode == "BACKWARD"  # the refused file's mode is not kept either
    _write(refund_v1, "refund.json", REFUND_WITH_CURRENCY)  # under the type's BACKWARD the same change passes
    assert _sync(refund_v1).splitlines() == ["refund.json: irs.refunds/refund.issued v2 created"]


def test_a_breaking_file_is_refused_with_every_finding_and_nothing_saved(refund_v1):
    _write(refund_v1, "refund.json", REFUND_BREAKING)
    before = _registry_state()

    code, message, _ = _refused(refund_v1)

    assert code == 1
    assert message.splitlines() == [*BREAKING_FINDINGS, "(nothing was saved: 2 problem(s) in 1 file(s))"]
    assert _registry_state() == before


def test_a_file_may_refer_to_the_version_an_earlier_file_of_the_same_sync_creates(db, tmp_path):
    _write(tmp_path, "a_refund.json", REFUND)
    held = {
        "x-hms-topic": "irs.refunds",
        "x-hms-event-type": "refund.held",
        "$ref": "urn:hms:schema:irs.refunds/refund.issued/v1",
    }
    _write(tmp_path, "b_held.json", held)

    checked = _sync(tmp_path, "--check")
    _sync(tmp_path)

    assert checked.splitlines() == ["2 file(s) checked: all valid and compatible with their types' modes"]
    assert SchemaVersion.objects.count() == 2


def test_two_files_for_one_event_type_are_refused(db, tmp_path):
    _write(tmp_path, "a.json", REFUND)
    _write(tmp_path, "b.json", REFUND_WITH_CURRENCY)

    _, message, _ = _refused(tmp_path)

    assert "b.json: /x-hms-event-type: irs.refunds/refund.issued is also in a.json: one file per event type" in message
    assert Topic.objects.count() == 0


def _deep(levels):
    schema = {"type": "object"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


BAD_INPUTS = [
    ({"minProperties": -1}, "bad.json: not a valid JSON Schema (Draft 2020-12) at /minProperties: -1 is less than"),
    (
        {"properties": {"a": {"$ref": "https://example.com/a.json"}}},
        "bad.json: /properties/a/$ref: 'https://example.com/a.json' does not resolve",
    ),
    ({"$ref": "#"}, "bad.json: the schema's root: $ref cycle with no keyword between"),
    ({"properties": {"a": {"type": "string", "pattern": "[a-"}}}, "bad.json: /properties/a/pattern: '[a-' is not"),
    ({"description": "x" * 270_000}, "bad.json: the schema's root: the schema is 264 KiB; a schema may be at most 256"),
    (_deep(70), "bad.json: /items/items/items/items/items/items/items/items/items/items/items/items/items/"),
    ({"x-hms-compatibility": "SIDEWAYS"}, 'bad.json: /x-hms-compatibility: "SIDEWAYS" is not a compatibility mode'),
    ({"x-hms-compatibility": None}, "bad.json: /x-hms-compatibility: null is not a compatibility mode"),
    ({"x-hms-compatibility-policy": "LAX"}, 'bad.json: /x-hms-compatibility-policy: "LAX" is not a compatibility'),
    ({"x-hms-topic": "Tax-Policy"}, "bad.json: /x-hms-topic: topic name 'Tax-Policy' breaks the naming rule"),
    ({"x-hms-topic": "irs.refunds.dlq"}, "bad.json: /x-hms-topic: topic name 'irs.refunds.dlq' ends with '.dlq'"),
    ({"x-hms-event-type": "Refund Voided"}, "bad.json: /x-hms-event-type: event type 'Refund Voided' breaks the"),
    ({"x-hms-event-type": 7}, "bad.json: /x-hms-event-type: must be a string: it names the event type"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("change", "expected"), BAD_INPUTS)
def test_a_bad_file_is_refused_naming_file_pointer_and_rule_before_anything_is_saved(tmp_path, change, expected):
    _write(tmp_path, "a_good.json", REFUND)
    bad = {"x-hms-topic": "irs.refunds", "x-hms-event-type": "refund.voided", "type": "object", **change}
    if "items" in change:
        bad = {**change, "x-hms-topic": "irs.refunds", "x-hms-event-type": "refund.voided"}
    _write(tmp_path, "bad.json", bad)

    code, message, _ = _refused(tmp_path)
    check_code, _, check_output = _refused(tmp_path, "--check")

    assert expected in message
    assert "nothing was saved" in message
    assert (code, check_code) == (1, 1)
    assert expected in check_output
    assert (Topic.objects.count(), SchemaVersion.objects.count(), AuditEntry.objects.count()) == (0, 0, 0)


@pytest.mark.django_db
def test_a_file_that_is_not_json_is_refused_naming_the_file(tmp_path):
    (tmp_path / "bad.json").write_text('{"x-hms-topic": ', encoding="utf-8")

    _, message, _ = _refused(tmp_path)

    assert "bad.json: the file: is not valid JSON" in message


def _export(folder):
    out = io.StringIO()
    call_command("export_schemas", folder, stdout=out)
    return out.getvalue()


@pytest.mark.usefixtures("demo")
def test_exporting_the_demo_and_syncing_it_back_changes_nothing(tmp_path):
    before = _registry_state()

    _export(tmp_path / "out")
    output = _sync(tmp_path / "out")

    assert output.splitlines() == [
        "tax_policy.updated.json: tax-policy/tax_policy.updated unchanged (v1)",
        "withholding_table.published.json: irs.withholding/withholding_table.published unchanged (v1)",
    ]
    assert _registry_state() == before


@pytest.mark.usefixtures("demo")
def test_the_round_trip_keeps_dashboard_versions_modes_and_a_disabled_head(tmp_path):
    tax = EventType.objects.get(name="tax_policy.updated")
    source = '{"type": "object", "properties": {"standard_deduction": {"type": "number"}}, "title": "Deduction ✓"}'
    schema_version_create(
        event_type=tax, schema=json.loads(source), source=source, compatibility=Compatibility.NONE, actor="admin-ui"
    )
    withholding = EventType.objects.get(name="withholding_table.published")
    event_type_compatibility_set(
        event_type=withholding, mode="FULL_TRANSITIVE", policy="LENIENT", reason="tables only grow", actor="cli:t"
    )
    refunds = event_type_create(topic=topic_create(name="irs.refunds", actor="cli:t"), name="refund.issued", actor="t")
    schema_version_create(event_type=refunds, schema={"type": "object"}, actor="t")
    disabled = schema_version_create(event_type=refunds, schema={"type": "object", "title": "v2"}, actor="t")
    admin = get_user_model().objects.get(username="admin")
    schema_version_state_set(version=disabled, state="disabled", reason="published by mistake", actor=admin)
    before = _registry_state()

    exported = _export(tmp_path)
    synced = _sync(tmp_path)

    assert "refund.issued.json: irs.refunds/refund.issued v2 (BACKWARD, STRICT, disabled: the newest" in exported
    assert synced.splitlines() == [
        "refund.issued.json: irs.refunds/refund.issued unchanged (v2)",
        "tax_policy.updated.json: tax-policy/tax_policy.updated unchanged (v2)",
        "withholding_table.published.json: irs.withholding/withholding_table.published unchanged (v1)",
    ]
    assert _registry_state() == before
    text = (tmp_path / "tax_policy.updated.json").read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert '"title": "Deduction ✓"' in text
    assert list(json.loads(text)) == [
        "x-hms-topic",
        "x-hms-event-type",
        "x-hms-compatibility",
        "x-hms-compatibility-policy",
        "type",
        "properties",
        "title",
    ]
    withholding_file = json.loads((tmp_path / "withholding_table.published.json").read_text(encoding="utf-8"))
    assert withholding_file["x-hms-compatibility"] == "FULL_TRANSITIVE"
    assert withholding_file["x-hms-compatibility-policy"] == "LENIENT"


@pytest.mark.usefixtures("demo")
def test_export_names_a_type_on_two_topics_by_topic_and_rewrites_a_file_that_names_its_type(tmp_path):
    archive = topic_create(name="irs.archive", actor="t")
    archived = event_type_create(topic=archive, name="tax_policy.updated", actor="t")
    schema_version_create(event_type=archived, schema={}, actor="t")
    tax = {"x-hms-topic": "tax-policy", "x-hms-event-type": "tax_policy.updated", "title": "an older copy"}
    _write(tmp_path, "tax_policy.json", tax)  # the schema repository's own name for it
    (tmp_path / "withholding_table.published.json").write_text("notes, not a schema", encoding="utf-8")

    _export(tmp_path)

    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "irs.archive--tax_policy.updated.json",
        "irs.withholding--withholding_table.published.json",
        "tax_policy.json",
        "withholding_table.published.json",
    ]
    assert json.loads((tmp_path / "tax_policy.json").read_text())["title"] == "Tax policy updated"
    assert (tmp_path / "withholding_table.published.json").read_text() == "notes, not a schema"
