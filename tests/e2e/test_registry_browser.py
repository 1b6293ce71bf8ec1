"""The schema registry in the browser: check, diff, save with a reason, four eyes on a sensitive topic, dry run."""

from __future__ import annotations

import json

import pytest
import redis
from django.contrib.auth.models import Group, User
from playwright.sync_api import Page, expect

from busapp.actions.dead_letters import dead_letter_create
from busapp.models import DeadLetter, DeadLetterStatus, SchemaVersion, SchemaVersionRequest, Source, Topic
from busapp.permissions import Role
from tests.conftest import DEMO_PASSWORD
from tests.e2e.conftest import BrowserLog, sign_in

pytestmark = pytest.mark.usefixtures("demo_committed")

DEDUCTION = {"type": "number", "minimum": 0, "title": "Standard deduction"}


def _tax_schema(**properties: object) -> dict[str, object]:
    return {
        "type": "object",
        "required": ["standard_deduction"],
        "properties": {"standard_deduction": DEDUCTION, **properties},
    }


def _draft(page: Page, schema: object) -> None:
    """Replace the editor's text with ``schema`` and press Check."""
    page.locator("#schema").fill(json.dumps(schema, indent=2))
    page.locator("#check").click()


def test_a_bus_admin_saves_a_compatible_version_then_reads_why_a_breaking_one_breaks(
    page: Page, browser_log: BrowserLog
) -> None:
    sign_in(page, "admin")
    page.goto("/topics/tax-policy/")
    page.locator("#new-version-tax_policy\\.updated").click()
    expect(page.locator("#schema")).to_contain_text('"standard_deduction"')  # the version in force, to edit
    expect(page.locator(".gutter")).to_contain_text("12")  # line numbers beside the text

    _draft(page, _tax_schema())
    expect(page.locator("#compatibility")).to_contain_text("compatible under BACKWARD (STRICT)")
    expect(page.locator("#preview")).to_contain_text("Standard deduction")  # the form policy staff will get
    page.locator("#reason").fill("titles for the publish form")
    page.locator("#save-button").click()
    expect(page.locator(".messages")).to_contain_text("tax_policy.updated v2 saved")

    page.locator("#new-version-tax_policy\\.updated").click()
    _draft(page, _tax_schema(credit_cap={"type": "number"}))
    findings = page.locator("ul.findings")
    expect(findings).to_contain_text("/properties/credit_cap: PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL")
    expect(findings).to_contain_text("events valid under v2 are refused")
    added = page.locator("table.diff tr", has_text="/properties/credit_cap")
    expect(added).to_have_class("diff-added breaks")
    expect(added).to_contain_text("writers")
    expect(page.locator("#declare_break")).to_be_visible()
    assert SchemaVersion.objects.filter(event_type__name="tax_policy.updated").count() == 2
    assert browser_log.errors == []


def test_on_a_sensitive_topic_a_breaking_version_waits_for_a_second_bus_admin_who_approves_it(
    page: Page, browser_log: BrowserLog
) -> None:
    second = User.objects.create_user("admin2", password=DEMO_PASSWORD, is_staff=True)
    second.groups.add(Group.objects.get(name=Role.BUS_ADMINS.value))
    in_force = SchemaVersion.objects.get(event_type__name="withholding_table.published")
    breaking = json.loads(in_force.source)
    breaking["required"] = [*breaking["required"], "filing_status"]

    sign_in(page, "admin")
    page.goto("/topics/irs.withholding/types/withholding_table.published/versions/new/")
    _draft(page, breaking)
    expect(page.locator("ul.findings")).to_contain_text("REQUIRED_ATTRIBUTE_ADDED")
    page.locator("#reason").fill("filing status is required from 2027")
    page.locator("#declare_break").check()
    page.locator("#save-button", has_text="Propose for approval").click()
    expect(page.locator("h1")).to_contain_text("awaiting a second bus admin")
    expect(page.locator("#approve")).to_have_count(0)  # nobody approves their own proposal
    assert SchemaVersion.objects.filter(event_type=in_force.event_type).count() == 1

    page.get_by_role("button", name="Sign out").click()
    sign_in(page, "admin2")
    page.goto("/topics/irs.withholding/")
    page.locator("#waiting-withholding_table\\.published").get_by_role("link").click()
    expect(page.locator("#diff")).to_contain_text("/required")
    page.fill("#reason", "payroll providers agreed")
    page.locator("#approve").click()

    expect(page.locator(".messages")).to_contain_text("withholding_table.published v2 is saved")
    saved = SchemaVersion.objects.get(event_type=in_force.event_type, version=2)
    assert saved.compatibility == "none"
    assert SchemaVersionRequest.objects.get().decided_by == second
    assert browser_log.errors == []


def test_the_dry_run_counts_the_dead_letters_a_version_would_pass_and_they_replay_after_saving(
    page: Page, browser_log: BrowserLog, bus: redis.Redis
) -> None:
    topic = Topic.objects.get(name="tax-policy")
    for text in ("12000", "-5", "many"):
        dead_letter_create(
            topic=topic,
            raw=json.dumps({"type": "tax_policy.updated", "payload": {"standard_deduction": text}}),
            errors=[{"path": "/payload/standard_deduction", "message": "is not of type 'number'"}],
            source=Source.CLI,
            actor="cli:test",
        )
    digits = {"type": ["number", "string"], "minimum": 0, "pattern": "^[0-9]+$", "title": "Standard deduction"}
    widened = {**_tax_schema(), "properties": {"standard_deduction": digits}}

    sign_in(page, "admin")
    page.goto("/topics/tax-policy/types/tax_policy.updated/versions/new/")
    _draft(page, widened)
    expect(page.locator("#dry-run-letters")).to_contain_text("1 of 3 open dead letters of this type would pass")
    page.locator("#reason").fill("the e-file feed sends amounts as text")
    page.locator("#save-button").click()
    expect(page.locator(".messages")).to_contain_text("v2 saved")

    passing = DeadLetter.objects.get(raw__contains="12000")
    page.goto(f"/dlq/{passing.pk}/")
    page.locator("#replay").click()
    expect(page.locator("dl.facts")).to_contain_text(f"dead letter #{passing.pk}")
    passing.refresh_from_db()
    assert passing.status == DeadLetterStatus.REPLAYED
    assert passing.replay_event is not None
    assert passing.replay_event.payload == {"standard_deduction": "12000"}
    assert browser_log.errors == []
