"""The management commands, run as an operator runs them: manage.py in a subprocess, exit codes and output."""

import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from busapp.models import AuditAction, AuditEntry, DeadLetter, Event, EventStatus, SchemaVersion, Topic
from busapp.permissions import Role
from busapp.publishing import stream_key
from tests.conftest import DEMO_PASSWORD
from tests.support import OutputWatcher, manage, seed_script, wait_for


@pytest.mark.usefixtures("demo_committed")
def test_publish_command_reaches_the_seeds_refund_service_and_prints_id_and_status(bus, suite_redis):
    refund_service = OutputWatcher(seed_script("refund_service.py", suite_redis.port))
    try:
        wait_for(lambda: bus.pubsub_numsub("tax-policy")[0][1] == 1, timeout=10, what="refund_service to subscribe")

        result = manage(
            "publish", "tax-policy", "tax_policy.updated", '{"standard_deduction": 15000}', redis_url=suite_redis.url()
        )

        assert result.returncode == 0, result.stderr
        refund_service.wait_for_line("New deduction = 15000")
    finally:
        refund_service.stop()
    event = Event.objects.get()
    assert result.stdout.strip() == f"{event.envelope_id} published to tax-policy (stream id {event.stream_id})"
    assert event.source == "cli"
    assert event.publisher_name.startswith("cli:")


@pytest.mark.usefixtures("demo_committed")
def test_publish_command_refuses_an_invalid_payload_line_by_line_and_keeps_a_dead_letter(bus, suite_redis):
    dlq = bus.pubsub()
    dlq.subscribe("tax-policy.dlq")
    dlq.get_message(timeout=1)

    result = manage(
        "publish",
        "tax-policy",
        "tax_policy.updated",
        '{"standard_deduction": -5, "year": 1}',
        redis_url=suite_redis.url(),
    )

    assert result.returncode != 0
    assert "/payload/standard_deduction: must be 0 or more" in result.stderr.splitlines()
    assert Event.objects.count() == 0
    letter = DeadLetter.objects.get()
    assert letter.source == "cli"
    assert json.loads(letter.raw) == {
        "type": "tax_policy.updated",
        "payload": {"standard_deduction": -5, "year": 1},
    }
    message = json.loads(dlq.get_message(timeout=2)["data"])
    assert message["errors"] == [{"path": "/payload/standard_deduction", "message": "must be 0 or more"}]
    assert message["event"]["payload"] == {"standard_deduction": -5, "year": 1}
    assert bus.xlen(stream_key("tax-policy.dlq")) == 1


@pytest.mark.usefixtures("demo")
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["tax-policy", "tax_policy.updated", "{standard_deduction: 1"], "/payload: is not valid JSON"),
        (["tax-policy", "tax_policy.updated", "[1, 2]"], "/payload: must be a JSON object"),
        (["tax-policy", "tax_policy.created", "{}"], "/type: unknown event type 'tax_policy.created'"),
        (["tax-policy", "tax_policy.updated", json.dumps({"pdf": "x" * 66_000})], "the limit is 65,536 bytes"),
    ],
)
def test_publish_command_names_the_field_and_rule_and_dead_letters_it(arguments, message, bus):
    err = io.StringIO()

    with pytest.raises(CommandError, match="event refused"):
        call_command("publish", *arguments, stderr=err, stdout=io.StringIO())

    assert message in err.getvalue()
    assert DeadLetter.objects.count() == 1
    assert Event.objects.count() == 0


@pytest.mark.usefixtures("demo")
def test_publish_command_refuses_an_unknown_topic_without_writing_anything(bus):
    before = AuditEntry.objects.count()

    with pytest.raises(CommandError, match="unknown topic 'tax'"):
        call_command("publish", "tax", "tax_policy.updated", "{}")

    assert (DeadLetter.objects.count(), AuditEntry.objects.count()) == (0, before)


@pytest.mark.usefixtures("demo_committed")
def test_publish_command_as_a_user_needs_their_publish_right(bus):
    with pytest.raises(CommandError, match="'auditor' may not publish to 'tax-policy'"):
        call_command("publish", "tax-policy", "tax_policy.updated", '{"standard_deduction": 1}', user="auditor")

    call_command(
        "publish", "tax-policy", "tax_policy.updated", '{"standard_deduction": 1}', user="policy", stdout=io.StringIO()
    )

    event = Event.objects.get()
    assert (event.publisher.username, event.status) == ("policy", EventStatus.PUBLISHED)


@pytest.mark.usefixtures("demo_committed")
def test_publish_command_with_redis_down_exits_zero_and_says_it_is_queued():
    result = manage(
        "publish", "tax-policy", "tax_policy.updated", '{"standard_deduction": 1}', redis_url="redis://127.0.0.1:1/0"
    )

    assert result.returncode == 0, result.stderr
    assert "pending: accepted and queued" in result.stdout
    assert "redis://127.0.0.1:1/0 is not reachable" in result.stdout
    assert Event.objects.get().status == EventStatus.PENDING


def _write_schema(folder, name, schema):
    (folder / name).write_text(json.dumps(schema))


@pytest.mark.django_db
def test_sync_schemas_creates_versions_once_and_again_only_when_a_file_changes(tmp_path):
    schema = {
        "x-hms-topic": "irs.refunds",
        "x-hms-event-type": "refund.issued",
        "type": "object",
        "properties": {"amount": {"type": "number"}},
        "additionalProperties": False,  # closed: a new optional property keeps it backward compatible
    }
    _write_schema(tmp_path, "refund.json", schema)
    out = io.StringIO()

    call_command("sync_schemas", tmp_path, stdout=out)
    call_command("sync_schemas", tmp_path, stdout=out)
    schema["properties"]["currency"] = {"type": "string"}
    _write_schema(tmp_path, "refund.json", schema)
    call_command("sync_schemas", tmp_path, stdout=out)

    assert out.getvalue().splitlines() == [
        "refund.json: topic irs.refunds created",
        "refund.json: event type irs.refunds/refund.issued created (BACKWARD, STRICT)",
        "refund.json: irs.refunds/refund.issued v1 created",
        "refund.json: irs.refunds/refund.issued unchanged (v1)",
        "refund.json: irs.refunds/refund.issued v2 created",
    ]
    assert list(SchemaVersion.objects.values_list("version", flat=True).order_by("version")) == [1, 2]
    assert Topic.objects.get().name == "irs.refunds"


@pytest.mark.django_db
def test_sync_schemas_with_one_bad_file_saves_nothing(tmp_path):
    good = {"x-hms-topic": "irs.refunds", "x-hms-event-type": "refund.issued", "type": "object"}
    bad = {"x-hms-topic": "irs.refunds", "x-hms-event-type": "refund.voided", "type": "object", "minProperties": -1}
    _write_schema(tmp_path, "a.json", good)
    _write_schema(tmp_path, "b.json", bad)

    refusal = r"(?s)b\.json: not a valid JSON Schema .* at /minProperties.*nothing was saved"
    with pytest.raises(CommandError, match=refusal):
        call_command("sync_schemas", tmp_path, stdout=io.StringIO())

    assert (Topic.objects.count(), SchemaVersion.objects.count(), AuditEntry.objects.count()) == (0, 0, 0)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("topic", "rule"),
    [
        ("Tax-Policy", "breaks the naming rule"),
        ("tax-policy.dlq", "reserved for dead letters"),
        ("tax..policy", "empty part"),
        ("t" * 81, "the limit is 80"),
    ],
)
def test_sync_schemas_refuses_a_topic_name_that_breaks_the_rule(tmp_path, topic, rule):
    _write_schema(tmp_path, "a.json", {"x-hms-topic": topic, "x-hms-event-type": "a.b", "type": "object"})

    with pytest.raises(CommandError, match=rule):
        call_command("sync_schemas", tmp_path, stdout=io.StringIO())
    assert Topic.objects.count() == 0


@pytest.mark.django_db
def test_load_demo_creates_each_role_once_and_prints_a_random_password_once():
    first, second = io.StringIO(), io.StringIO()

    call_command("load_demo", stdout=first)
    call_command("load_demo", stdout=second)

    password_line = next(line for line in first.getvalue().splitlines() if line.startswith("demo password"))
    password = password_line.rsplit(": ", 1)[1]
    assert len(password) >= 12
    assert "passwords unchanged" in second.getvalue()
    assert password not in second.getvalue()
    users = get_user_model().objects
    assert users.get(username="policy").check_password(password)
    assert {user.username: user.groups.get().name for user in users.all()} == {
        "policy": Role.POLICY_PUBLISHERS,
        "policy2": Role.POLICY_PUBLISHERS,
        "auditor": Role.AUDITORS,
        "admin": Role.BUS_ADMINS,
    }
    assert Topic.objects.get(name="irs.withholding").sensitive
    assert AuditEntry.objects.filter(action=AuditAction.USER_CREATE).count() == 4
    before = AuditEntry.objects.order_by("-seq").values_list("seq", flat=True).first()
    call_command("load_demo", "--password", "a-new-demo-password", stdout=io.StringIO())  # a reset is written down
    changed = AuditEntry.objects.filter(seq__gt=before, action=AuditAction.USER_CHANGE, actor_name="cli:load_demo")
    assert sorted(entry.target for entry in changed) == ["user:admin", "user:auditor", "user:policy", "user:policy2"]
    assert all(entry.details == {"changed": ["password"]} for entry in changed)
    assert "a-new-demo-password" not in json.dumps([entry.details for entry in AuditEntry.objects.all()])
    assert SchemaVersion.objects.get(event_type__name="tax_policy.updated").schema["properties"] == {
        "standard_deduction": {
            "type": "number",
            "minimum": 0,
            "title": "Standard deduction",
            "description": "The new standard deduction, in US dollars.",
        }
    }


@pytest.mark.usefixtures("demo")
def test_demo_roles_hold_the_rights_the_design_gives_them():
    from busapp.permissions import topic_right_held

    users = {user.username: user for user in get_user_model().objects.all()}
    tax, withholding = Topic.objects.get(name="tax-policy"), Topic.objects.get(name="irs.withholding")

    assert topic_right_held(users["policy"], "publish_topic", tax)
    assert topic_right_held(users["policy2"], "approve_topic", withholding)
    assert not topic_right_held(users["policy"], "manage_topic", tax)
    assert not topic_right_held(users["auditor"], "publish_topic", tax)
    assert topic_right_held(users["auditor"], "view_topic", withholding)
    assert topic_right_held(users["admin"], "manage_topic", withholding)
    assert users["admin"].check_password(DEMO_PASSWORD)
