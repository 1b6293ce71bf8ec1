"""Topics in the dashboard: bus admins create one with its first event type and schema; editors change it, audited."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.db.models import ProtectedError
from django.test import Client

from busapp.actions.access import grant_create
from busapp.actions.registry import topic_create_with_type, topic_update
from busapp.errors import RecordInvalidError, RightRefusedError
from busapp.models import (
    STREAM_RETENTION_MAX,
    STREAM_RETENTION_MIN,
    AuditEntry,
    EventType,
    SchemaVersion,
    Topic,
)
from busapp.permissions import MANAGE_TOPIC, VIEW_TOPIC

pytestmark = pytest.mark.usefixtures("demo")

NEW = "/topics/new/"
CHECK = "/topics/new/name-check/"
SCHEMA = {
    "type": "object",
    "properties": {"rate": {"type": "number", "minimum": 0}},
    "required": ["rate"],
}


def _person(username: str) -> User:
    return User.objects.get(username=username)  # fresh: Django caches permissions on the instance


def _client(username: str) -> Client:
    client = Client()
    client.force_login(_person(username))
    return client


def _new_topic(**changes: Any) -> dict[str, Any]:
    """The new-topic form as a bus admin fills it in, with ``changes``."""
    form = {
        "name": "irs.estimated_tax.updated",
        "description": "Quarterly estimated tax rates.",
        "owner": "",
        "stream_retention": "50000",
        "type_name": "estimated_tax.updated",
        "type_description": "A new quarterly rate.",
        "schema": json.dumps(SCHEMA, indent=2),
    }
    form.update(changes)
    return form


def _entries_since(seq: int) -> list[tuple[str, str]]:
    """The audit entries written after entry ``seq``: (action, target)."""
    return list(AuditEntry.objects.filter(seq__gt=seq).order_by("seq").values_list("action", "target"))


def _last_seq() -> int:
    return AuditEntry.objects.order_by("-seq").values_list("seq", flat=True).first() or 0


def _errors(response: Any) -> dict[str, list[str]]:
    return {field: list(messages) for field, messages in response.context["form"].errors.items()}


# Creating


def test_a_bus_admin_creates_a_topic_with_its_first_type_and_schema_each_in_the_audit_log() -> None:
    """One form: the topic, its type and schema v1 exist, and the log has topic, type and version, in that order."""
    owners = Group.objects.create(name="Estimated tax team")
    seq = _last_seq()

    response = _client("admin").post(NEW, _new_topic(owner=str(owners.pk), sensitive="on"))

    assert response.status_code == 302
    assert response["Location"] == "/topics/irs.estimated_tax.updated/"
    topic = Topic.objects.get(name="irs.estimated_tax.updated")
    assert (topic.owner, topic.sensitive, topic.stream_retention) == (owners, True, 50_000)
    assert topic.created_by == _person("admin")
    version = SchemaVersion.objects.get(event_type__topic=topic)
    assert (version.event_type.name, version.version, version.schema) == ("estimated_tax.updated", 1, SCHEMA)
    assert json.loads(version.source) == SCHEMA
    assert _entries_since(seq) == [
        ("topic.create", "topic:irs.estimated_tax.updated"),
        ("event_type.create", "event_type:irs.estimated_tax.updated/estimated_tax.updated"),
        ("schema_version.create", "schema:irs.estimated_tax.updated/estimated_tax.updated/v1"),
    ]
    created = AuditEntry.objects.get(seq=seq + 1)
    assert created.details["owner"] == "Estimated tax team"
    assert created.details["sensitive"] is True


def test_the_new_topic_page_lands_on_the_topic_page_showing_its_type_and_owner() -> None:
    owners = Group.objects.create(name="Estimated tax team")
    client = _client("admin")

    page = client.post(NEW, _new_topic(owner=str(owners.pk)), follow=True)

    html = page.content.decode()
    assert "Created irs.estimated_tax.updated with estimated_tax.updated and its schema v1." in html
    assert "<code>estimated_tax.updated</code>" in html
    assert "Owner: Estimated tax team" in html
    assert "Estimated tax team" in client.get("/topics/").content.decode()


def test_the_form_starts_with_the_default_retention_and_an_example_schema_that_would_be_accepted(settings) -> None:
    settings.BUS_STREAM_MAXLEN = 12_345
    client = _client("admin")

    form = client.get(NEW).context["form"]
    example = json.loads(form["schema"].value())
    posted = client.post(NEW, _new_topic(schema=json.dumps(example), stream_retention=form["stream_retention"].value()))

    assert form["stream_retention"].value() == 12_345
    assert posted.status_code == 302
    assert Topic.objects.get(name="irs.estimated_tax.updated").stream_retention == 12_345


@pytest.mark.parametrize(
    ("schema", "said"),
    [
        ('{"type": "objekt"}', "not a valid JSON Schema"),
        ('{"$ref": "https://example.com/elsewhere.json"}', "$ref"),
        ('{"type": "string", "pattern": "(a+)+(?=b)"}', "pattern"),
        ("[" * 70 + "]" * 70, "64"),
        ('{"type": "object",', "JSON"),
        ("{}", "describes nothing"),
    ],
    ids=["invalid", "ref-outside", "regex-refused", "too-deep", "not-json", "empty"],
)
def test_a_schema_that_cannot_be_saved_is_shown_at_its_field_and_leaves_nothing_behind(schema: str, said: str) -> None:
    """Refused at the schema field, 400, with the text kept; no topic, no type, no version, no audit entry."""
    seq = _last_seq()

    response = _client("admin").post(NEW, _new_topic(schema=schema))

    assert response.status_code == 400
    assert list(_errors(response)) == ["schema"]
    assert said in _errors(response)["schema"][0]
    assert not Topic.objects.filter(name="irs.estimated_tax.updated").exists()
    assert not EventType.objects.filter(name="estimated_tax.updated").exists()
    assert _entries_since(seq) == []
    html = response.content.decode()
    assert 'id="id_schema_error"' in html
    assert "Quarterly estimated tax rates." in html  # every value kept


def test_the_action_refuses_an_invalid_schema_whole_even_when_called_directly() -> None:
    seq = _last_seq()

    with pytest.raises(RecordInvalidError) as refused:
        topic_create_with_type(
            name="irs.estimated_tax.updated",
            type_name="estimated_tax.updated",
            schema={"type": "object", "properties": {"rate": {"minimum": "zero"}}},
            actor=_person("admin"),
        )

    assert [error["path"] for error in refused.value.errors] == ["/schema"]
    assert "/properties/rate/minimum" in refused.value.errors[0]["message"]
    assert not Topic.objects.filter(name="irs.estimated_tax.updated").exists()
    assert _entries_since(seq) == []


def test_a_version_refused_after_the_topic_is_written_takes_the_topic_and_type_back_with_it(monkeypatch) -> None:
    """All or nothing: a refusal at the last step (another version won a race, say) rolls back the first two."""
    import busapp.actions.registry as registry
    from busapp.errors import SchemaInvalidError

    def refused(**_: Any) -> None:
        raise SchemaInvalidError("at the root: refused at the last step")

    monkeypatch.setattr(registry, "schema_version_create", refused)
    seq = _last_seq()

    with pytest.raises(RecordInvalidError, match="refused at the last step"):
        topic_create_with_type(
            name="irs.estimated_tax.updated", type_name="estimated_tax.updated", schema=SCHEMA, actor=_person("admin")
        )

    assert not Topic.objects.filter(name="irs.estimated_tax.updated").exists()
    assert not EventType.objects.filter(name="estimated_tax.updated").exists()
    assert _entries_since(seq) == []


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("IRS.Tax", "breaks the naming rule"),
        ("irs.tax policy", "breaks the naming rule"),
        ("irs.estimated_tax.dlq", "reserved for dead letters"),
        ("irs..tax", "an empty part or a trailing separator"),
        ("irs.tax.", "an empty part or a trailing separator"),
        ("new", "is reserved"),
        ("tax-policy", "is taken"),
        ("x" * 81, "the limit is 80"),
    ],
)
def test_a_name_that_breaks_the_rule_or_is_taken_is_refused_at_the_name_field(name: str, rule: str) -> None:
    seq = _last_seq()

    response = _client("admin").post(NEW, _new_topic(name=name))

    assert response.status_code == 400
    assert list(_errors(response)) == ["name"]
    assert rule in _errors(response)["name"][0]
    assert _entries_since(seq) == []
    assert 'aria-invalid="true"' in response.content.decode()


def test_every_problem_is_shown_at_once_each_at_its_field() -> None:
    response = _client("admin").post(
        NEW, _new_topic(name="tax-policy.dlq", type_name="Bad Type", stream_retention="5", schema='{"type": 1}')
    )

    assert sorted(_errors(response)) == ["name", "schema", "stream_retention", "type_name"]
    html = response.content.decode()
    assert "There are problems to fix" in html
    assert 'href="#id_stream_retention"' in html


@pytest.mark.parametrize(
    ("retention", "accepted"),
    [
        (STREAM_RETENTION_MIN - 1, False),
        (STREAM_RETENTION_MIN, True),
        (STREAM_RETENTION_MAX, True),
        (STREAM_RETENTION_MAX + 1, False),
        (-1, False),
    ],
)
def test_stream_retention_is_bounded(retention: int, accepted: bool) -> None:
    response = _client("admin").post(NEW, _new_topic(stream_retention=str(retention)))

    assert (response.status_code == 302) is accepted
    assert Topic.objects.filter(name="irs.estimated_tax.updated").exists() is accepted
    if not accepted:
        assert list(_errors(response)) == ["stream_retention"]
        assert "between 100 and 10,000,000" in _errors(response)["stream_retention"][0]


def test_the_action_checks_the_bounds_and_the_name_itself() -> None:
    with pytest.raises(RecordInvalidError) as refused:
        topic_create_with_type(
            name="tax-policy", type_name="x.y", schema=SCHEMA, stream_retention=10**9, actor=_person("admin")
        )

    paths = sorted(error["path"] for error in refused.value.errors)
    assert paths == ["/name", "/stream_retention"]


@pytest.mark.parametrize("username", ["policy", "auditor"])
def test_only_bus_admins_may_open_create_or_check_names_and_only_they_see_the_link(username: str) -> None:
    client = _client(username)
    seq = _last_seq()

    assert client.get(NEW).status_code == 403
    assert client.get(CHECK, {"name": "irs.new"}).status_code == 403
    assert client.post(NEW, _new_topic()).status_code == 403
    assert not Topic.objects.filter(name="irs.estimated_tax.updated").exists()
    assert _entries_since(seq) == [("manage.refused", "topic:new")]
    assert NEW not in client.get("/topics/").content.decode()
    assert NEW in _client("admin").get("/topics/").content.decode()


def test_the_action_refuses_anyone_but_a_bus_admin() -> None:
    with pytest.raises(RightRefusedError):
        topic_create_with_type(name="irs.other", type_name="x.y", schema=SCHEMA, actor=_person("policy"))


# The live name check


@pytest.mark.parametrize(
    ("name", "ok", "said"),
    [
        ("irs.estimated_tax.updated", True, "follows the naming rule and is free"),
        ("irs.tax.dlq", False, "reserved for dead letters"),
        ("Irs", False, "breaks the naming rule"),
        ("tax-policy", False, "is taken"),
        ("", False, "agency.domain.event"),
    ],
)
def test_the_name_check_answers_by_the_rule_creation_applies(name: str, ok: bool, said: str) -> None:
    answer = _client("admin").get(CHECK, {"name": name}).json()

    assert (answer["name"], answer["ok"]) == (name, ok)
    assert said in answer["message"]


def test_the_page_shows_the_seeds_example_and_where_the_check_asks() -> None:
    html = _client("admin").get(NEW).content.decode()

    assert "agency.domain.event, like irs.tax_policy.updated" in html
    assert f'data-name-check="{CHECK}"' in html
    assert 'src="/static/js/topic_new.js"' in html


# Editing


def _edit(topic: str = "tax-policy", **changes: str) -> dict[str, str]:
    current = Topic.objects.get(name=topic)
    form = {
        "description": current.description,
        "owner": str(current.owner_id or ""),
        "stream_retention": str(current.stream_retention),
        "reason": "",
    }
    form.update(changes)
    return form


def test_a_bus_admin_edits_a_topic_and_one_audit_entry_holds_before_and_after() -> None:
    owners = Group.objects.create(name="Tax policy office")
    before = Topic.objects.get(name="tax-policy")
    seq = _last_seq()

    response = _client("admin").post(
        "/topics/tax-policy/edit/",
        _edit(description="The standard deduction and friends.", owner=str(owners.pk), reason="new team"),
    )

    assert response.status_code == 302
    assert response["Location"] == "/topics/tax-policy/"
    after = Topic.objects.get(name="tax-policy")
    assert (after.description, after.owner, after.stream_retention) == (
        "The standard deduction and friends.",
        owners,
        before.stream_retention,
    )
    assert _entries_since(seq) == [("topic.update", "topic:tax-policy")]
    assert AuditEntry.objects.get(seq=seq + 1).details == {
        "description": [before.description, "The standard deduction and friends."],
        "owner": [None, "Tax policy office"],
        "reason": "new team",
    }


def test_someone_who_manages_the_topic_edits_it_and_no_other_topic() -> None:
    policy = _person("policy")
    grant_create(
        principal=policy,
        topics=[Topic.objects.get(name="tax-policy")],
        rights=[MANAGE_TOPIC],
        reason="owns the topic",
        actor=_person("admin"),
    )
    client = _client("policy")
    seq = _last_seq()

    edited = client.post("/topics/tax-policy/edit/", _edit(stream_retention="2000"))
    refused = client.post("/topics/irs.withholding/edit/", _edit("irs.withholding", stream_retention="2000"))

    assert edited.status_code == 302
    assert Topic.objects.get(name="tax-policy").stream_retention == 2000
    assert refused.status_code == 403
    assert Topic.objects.get(name="irs.withholding").stream_retention != 2000
    assert [action for action, _ in _entries_since(seq)] == ["topic.update", "manage.refused"]
    assert AuditEntry.objects.get(seq=seq + 1).details == {"stream_retention": [100_000, 2000]}


def test_a_publisher_may_not_edit_and_sees_no_edit_form() -> None:
    client = _client("policy")
    seq = _last_seq()

    assert client.get("/topics/tax-policy/edit/").status_code == 403
    refused = client.post("/topics/tax-policy/edit/", _edit(description="mine now"))

    assert refused.status_code == 403
    assert Topic.objects.get(name="tax-policy").description != "mine now"
    assert _entries_since(seq) == [("manage.refused", "topic:tax-policy")]
    assert 'id="topic-edit"' not in client.get("/topics/tax-policy/").content.decode()
    assert 'id="topic-edit"' in _client("admin").get("/topics/tax-policy/").content.decode()
    with pytest.raises(RightRefusedError):
        topic_update(
            topic=Topic.objects.get(name="tax-policy"),
            description="mine now",
            owner=None,
            stream_retention=100_000,
            actor=_person("policy"),
        )


def test_the_name_never_changes_a_posted_one_is_refused() -> None:
    seq = _last_seq()

    response = _client("admin").post("/topics/tax-policy/edit/", _edit(name="tax-policy-2", description="x"))

    assert response.status_code == 400
    assert "a topic's name never changes" in response.context["edit_form"].non_field_errors()[0]
    assert Topic.objects.filter(name="tax-policy").exists()
    assert not Topic.objects.filter(name="tax-policy-2").exists()
    assert _entries_since(seq) == []


def test_sensitive_cannot_be_changed_by_the_edit_form_only_by_four_eyes() -> None:
    seq = _last_seq()

    response = _client("admin").post("/topics/irs.withholding/edit/", _edit("irs.withholding", sensitive=""))

    assert response.status_code == 400
    assert "/topics/irs.withholding/sensitivity/" in response.context["edit_form"].non_field_errors()[0]
    assert Topic.objects.get(name="irs.withholding").sensitive
    assert _entries_since(seq) == []
    page = _client("admin").get("/topics/irs.withholding/edit/").content.decode()
    assert 'name="sensitive"' not in page
    assert 'href="/topics/irs.withholding/sensitivity/"' in page


def test_an_edit_that_changes_nothing_says_so_and_writes_no_entry() -> None:
    seq = _last_seq()

    response = _client("admin").post("/topics/tax-policy/edit/", _edit())

    assert response.status_code == 400
    assert "nothing changed" in response.context["edit_form"].non_field_errors()[0]
    assert _entries_since(seq) == []


def test_an_edit_out_of_bounds_is_refused_at_its_field_with_the_values_kept() -> None:
    response = _client("admin").post(
        "/topics/tax-policy/edit/", _edit(stream_retention=str(STREAM_RETENTION_MAX + 1), description="kept text")
    )

    assert response.status_code == 400
    assert list(response.context["edit_form"].errors) == ["stream_retention"]
    assert "kept text" in response.content.decode()
    assert Topic.objects.get(name="tax-policy").description != "kept text"


def test_the_django_admin_edits_through_the_same_action() -> None:
    """One place for topic edits: the admin's save writes the same before/after entry."""
    seq = _last_seq()
    topic = Topic.objects.get(name="tax-policy")

    _client("admin").post(
        f"/admin/busapp/topic/{topic.pk}/change/",
        {"description": "from the admin", "stream_retention": str(topic.stream_retention), "owner": ""},
    )

    assert _entries_since(seq) == [("topic.update", "topic:tax-policy")]
    assert AuditEntry.objects.get(seq=seq + 1).details == {"description": [topic.description, "from the admin"]}


def test_a_group_that_owns_a_topic_is_not_deleted_behind_the_audit_log() -> None:
    owners = Group.objects.create(name="Tax policy office")
    topic_update(
        topic=Topic.objects.get(name="tax-policy"),
        description="",
        owner=owners,
        stream_retention=100_000,
        actor=_person("admin"),
    )

    with pytest.raises(ProtectedError):
        owners.delete()


def test_viewing_rights_are_unchanged_by_ownership() -> None:
    """The owner is who answers for the topic; it grants its members nothing."""
    owners = Group.objects.create(name="Tax policy office")
    outsider = User.objects.create_user("outsider")
    outsider.groups.add(owners)
    topic_update(
        topic=Topic.objects.get(name="irs.withholding"),
        description="",
        owner=owners,
        stream_retention=100_000,
        actor=_person("admin"),
    )

    from busapp.permissions import topic_right_held

    assert not topic_right_held(_person("outsider"), VIEW_TOPIC, Topic.objects.get(name="irs.withholding"))
