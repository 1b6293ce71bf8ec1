"""An event type's compatibility on its topic page: its versions listed, the mode set by a bus admin with a reason."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils.html import strip_tags

from busapp.actions.registry import schema_version_create
from busapp.errors import SchemaInvalidError
from busapp.models import AuditEntry, EventType

pytestmark = pytest.mark.usefixtures("demo")

FORM = "/topics/tax-policy/types/tax_policy.updated/compatibility/"


def _client(username: str) -> Client:
    client = Client()
    client.force_login(User.objects.get(username=username))
    return client


def _text(client: Client, path: str = "/topics/tax-policy/") -> str:
    return " ".join(strip_tags(client.get(path).content.decode()).split())


def _tax_policy() -> EventType:
    return EventType.objects.get(name="tax_policy.updated")


def test_the_topic_page_lists_every_version_and_the_types_mode() -> None:
    widened = {
        "type": "object",
        "properties": {"standard_deduction": {"type": "number"}},
        "additionalProperties": False,
    }
    schema_version_create(event_type=_tax_policy(), schema=widened, actor="cli:test", compatibility="none")

    page = _text(_client("policy"))

    assert "New versions are checked under BACKWARD: events valid under the last version stay valid" in page
    assert "Schema versions (2)" in page
    assert "v2 in force enabled 0 declared a breaking change" in page
    assert "v1 enabled 0 against the mode" in page
    assert "Set the mode" not in page  # policy staff read it; bus admins set it


def test_a_bus_admin_sets_the_mode_with_a_reason_and_the_next_version_is_checked_under_it() -> None:
    admin = _client("admin")

    response = admin.post(
        FORM, {"mode": "FULL_TRANSITIVE", "policy": "LENIENT", "reason": "filing season: no surprises"}
    )

    assert response.status_code == 302
    assert (_tax_policy().compatibility_mode, _tax_policy().compatibility_policy) == ("FULL_TRANSITIVE", "LENIENT")
    entry = AuditEntry.objects.get(action="event_type.compatibility")
    assert entry.details == {
        "mode": ["BACKWARD", "FULL_TRANSITIVE"],
        "policy": ["STRICT", "LENIENT"],
        "reason": "filing season: no surprises",
    }
    assert "FULL_TRANSITIVE: both, against every earlier version" in _text(admin)
    deduction = {"standard_deduction": {"type": "number", "minimum": 0}}
    optional = {
        "type": "object",
        "required": ["standard_deduction"],
        "properties": {**deduction, "note": {"type": "string"}},
    }
    schema_version_create(event_type=_tax_policy(), schema=optional, actor="cli:test")  # LENIENT: allowed both ways
    dropped = {"type": "object", "properties": deduction}  # events without a deduction: v1's subscribers refuse them
    with pytest.raises(SchemaInvalidError, match=r"FULL_TRANSITIVE \(LENIENT\): /required: REQUIRED_ATTRIBUTE_ADDED"):
        schema_version_create(event_type=_tax_policy(), schema=dropped, actor="cli:test")


@pytest.mark.parametrize(
    ("asked", "shown"),
    [
        ({"mode": "SIDEWAYS", "policy": "STRICT", "reason": "x"}, "mode: is not a mode: use one of NONE, BACKWARD"),
        ({"mode": "FULL", "policy": "LOOSE", "reason": "x"}, "policy: is not a policy: use STRICT or LENIENT"),
        ({"mode": "FULL", "policy": "STRICT", "reason": " "}, "reason: is required: say why, for the audit log"),
        (
            {"mode": "BACKWARD", "policy": "STRICT", "reason": "x"},
            "mode: is BACKWARD (STRICT) already: nothing to change",
        ),
    ],
)
def test_a_bad_change_is_refused_at_its_form_naming_the_field_and_nothing_changes(asked: dict, shown: str) -> None:
    response = _client("admin").post(FORM, asked)

    assert response.status_code == 400
    assert shown in " ".join(strip_tags(response.content.decode()).split())
    assert (_tax_policy().compatibility_mode, _tax_policy().compatibility_policy) == ("BACKWARD", "STRICT")
    assert not AuditEntry.objects.filter(action="event_type.compatibility").exists()


def test_only_a_bus_admin_sets_the_mode_and_a_refusal_is_audited() -> None:
    response = _client("policy").post(FORM, {"mode": "NONE", "policy": "STRICT", "reason": "just publish"})

    assert response.status_code == 403
    assert _tax_policy().compatibility_mode == "BACKWARD"
    assert AuditEntry.objects.get(action="event_type.compatibility.refused").actor_name == "policy"
