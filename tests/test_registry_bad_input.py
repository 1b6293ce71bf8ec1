"""The issue's bad registry input, refused alike on every path: dashboard, API, sync_schemas, Django admin.

Each refusal names the JSON pointer (or the field) and the rule, and nothing is saved.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from busapp.models import AuditEntry, EventType, SchemaVersion, Topic
from tests.support import signed_in

pytestmark = pytest.mark.usefixtures("demo")

TYPE_PAGE = "/topics/tax-policy/types/tax_policy.updated/versions/new/"
TYPE_API = "/api/topics/tax-policy/types/tax_policy.updated/versions/"


def _nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


# (what is wrong, the schema, what the refusal must say: the pointer and the rule)
SCHEMAS = [
    ("not JSON Schema", {"type": "object", "properties": {"a": {"type": "money"}}}, "at /properties/a/type"),
    (
        "a $ref outside the registry",
        {"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}},
        "/properties/a/$ref: 'https://example.com/a.json' does not resolve",
    ),
    ("a $ref cycle", {"$ref": "#"}, "the schema's root: $ref cycle with no keyword between"),
    (
        "a pattern that is not a regex",
        {"type": "object", "properties": {"a": {"type": "string", "pattern": "(a"}}},
        "/properties/a/pattern: '(a' is not allowed",
    ),
    (
        "a pattern that backtracks catastrophically",
        {"type": "object", "properties": {"a": {"type": "string", "pattern": "^(a+)+$"}}},
        "/properties/a/pattern: '^(a+)+$' is not allowed: a repeated group holds a repetition",
    ),
    (
        "over 256 KiB",
        {"type": "object", "description": "x" * (257 * 1024)},
        "a schema may be at most 256 KiB",
    ),
    ("nested over 64 levels", _nested(40), "/properties/a/properties/a"),
]
IDS = [case[0] for case in SCHEMAS]


def _nothing_saved(before: tuple[int, int]) -> None:
    assert (SchemaVersion.objects.count(), AuditEntry.objects.exclude(action__endswith="refused").count()) == before


def _counts() -> tuple[int, int]:
    return SchemaVersion.objects.count(), AuditEntry.objects.exclude(action__endswith="refused").count()


def _said(response: Any) -> str:
    return response.content.decode().replace("&#x27;", "'").replace("&amp;", "&").replace("&quot;", '"')


@pytest.mark.parametrize(("schema", "said"), [case[1:] for case in SCHEMAS], ids=IDS)
def test_the_dashboard_refuses_it_at_check_and_at_save(schema: dict[str, Any], said: str) -> None:
    admin, before = signed_in("admin"), _counts()
    body = {"schema": json.dumps(schema), "reason": "bad input", "declare_break": "yes"}

    checked = admin.post(TYPE_PAGE, {**body, "action": "check"})
    saved = admin.post(TYPE_PAGE, {**body, "action": "save"})

    assert checked.status_code == 200  # the verdict page, saying why
    assert said in _said(checked)
    assert saved.status_code == 400
    assert said in _said(saved)
    _nothing_saved(before)


@pytest.mark.parametrize(("schema", "said"), [case[1:] for case in SCHEMAS], ids=IDS)
def test_the_api_refuses_it_at_schema(schema: dict[str, Any], said: str) -> None:
    """422 for a schema the registry refuses; 400 for a body too deep to read at all (the parser's rule)."""
    before = _counts()

    response = signed_in("admin").post(
        TYPE_API,
        {"schema": schema, "reason": "bad input", "declare_break": True},
        content_type="application/json",
    )

    assert response.status_code in (400, 422), response.content
    [error] = response.json()["errors"]
    assert error["path"].startswith("/schema")
    assert said in error["path"] + ": " + error["message"]
    _nothing_saved(before)


@pytest.mark.parametrize(("schema", "said"), [case[1:] for case in SCHEMAS], ids=IDS)
def test_sync_schemas_refuses_the_file_naming_it(schema: dict[str, Any], said: str, tmp_path: Path) -> None:
    before = _counts()
    file = tmp_path / "tax_policy.json"
    file.write_text(json.dumps({**schema, "x-hms-topic": "tax-policy", "x-hms-event-type": "tax_policy.updated"}))

    with pytest.raises(CommandError) as refused:
        call_command("sync_schemas", str(tmp_path), stdout=io.StringIO())

    assert "tax_policy.json" in str(refused.value)
    assert said in str(refused.value)
    _nothing_saved(before)


@pytest.mark.parametrize(("schema", "said"), [case[1:] for case in SCHEMAS], ids=IDS)
def test_the_django_admin_refuses_it_next_to_the_schema_field(schema: dict[str, Any], said: str) -> None:
    before = _counts()
    event_type = EventType.objects.get(name="tax_policy.updated")

    response = signed_in("admin").post(
        "/admin/busapp/schemaversion/add/",
        {"event_type": event_type.pk, "schema": json.dumps(schema), "compatibility": "backward"},
    )

    assert response.status_code == 200
    assert said in _said(response)
    _nothing_saved(before)


BAD_NAMES = [
    ("Tax Policy", "name"),
    ("tax-policy.dlq", ".dlq"),
]


@pytest.mark.parametrize(("name", "said"), BAD_NAMES)
def test_a_bad_topic_name_is_refused_on_every_path(name: str, said: str, tmp_path: Path) -> None:
    admin: Client = signed_in("admin")
    topics = Topic.objects.count()
    schema = {"type": "object"}

    page = admin.post(
        "/topics/new/", {"name": name, "stream_retention": "1000", "type_name": "x.made", "schema": json.dumps(schema)}
    )
    api = admin.post(
        "/api/topics/",
        {"name": name, "event_type": {"name": "x.made", "schema": schema}},
        content_type="application/json",
    )
    file = tmp_path / "x.json"
    file.write_text(json.dumps({**schema, "x-hms-topic": name, "x-hms-event-type": "x.made"}))
    with pytest.raises(CommandError) as command:
        call_command("sync_schemas", str(tmp_path), stdout=io.StringIO())
    django_admin = admin.post("/admin/busapp/topic/add/", {"name": name, "stream_retention": "1000"})

    assert page.status_code == 400
    assert said in _said(page)
    assert api.status_code == 422
    assert api.json()["errors"][0]["path"] == "/name"
    assert said in api.json()["errors"][0]["message"]
    assert said in str(command.value)
    assert django_admin.status_code == 200
    assert said in _said(django_admin)
    assert Topic.objects.count() == topics


def test_an_unknown_mode_is_refused_on_every_path(tmp_path: Path) -> None:
    admin = signed_in("admin")
    event_type = EventType.objects.get(name="tax_policy.updated")

    page = admin.post(
        "/topics/tax-policy/types/tax_policy.updated/compatibility/",
        {"mode": "SIDEWAYS", "policy": "STRICT", "reason": "x"},
    )
    api = admin.post(
        "/api/topics/tax-policy/types/tax_policy.updated/compatibility/",
        {"mode": "SIDEWAYS", "reason": "x"},
        content_type="application/json",
    )
    file = tmp_path / "tax_policy.json"
    schema = json.loads(SchemaVersion.objects.get(event_type=event_type).source)
    file.write_text(json.dumps({**schema, "x-hms-compatibility": "SIDEWAYS"}))
    with pytest.raises(CommandError) as command:
        call_command("sync_schemas", str(tmp_path), stdout=io.StringIO())
    django_admin = admin.post(
        f"/admin/busapp/eventtype/{event_type.pk}/change/",
        {
            "topic": event_type.topic_id,
            "name": event_type.name,
            "compatibility_mode": "SIDEWAYS",
            "compatibility_policy": "STRICT",
        },
    )

    assert page.status_code == 400
    assert "mode: is not a mode" in _said(page)
    assert api.status_code == 400
    assert api.json()["errors"][0]["path"] == "/mode"
    assert "x-hms-compatibility" in str(command.value)
    assert "SIDEWAYS" in str(command.value)
    assert "SIDEWAYS is not one of the available choices" in _said(django_admin)
    event_type.refresh_from_db()
    assert event_type.compatibility_mode == "BACKWARD"
