"""A bus admin creates a topic in the browser: the name is checked as typed, then the topic page shows it."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import Page, expect

from busapp.models import SchemaVersion, Topic
from tests.e2e.conftest import BrowserLog, sign_in

pytestmark = pytest.mark.usefixtures("demo_committed")

SCHEMA = {
    "type": "object",
    "properties": {"rate": {"type": "number", "minimum": 0, "description": "The quarterly rate"}},
    "required": ["rate"],
}


def test_a_bus_admin_sees_the_name_checked_as_typed_and_creates_a_topic_with_its_first_type(
    page: Page, browser_log: BrowserLog
) -> None:
    sign_in(page, "admin")
    page.get_by_role("link", name="Topics", exact=True).click()
    page.get_by_role("link", name="New topic").click()
    expect(page.locator("h1")).to_have_text("New topic")
    expect(page.locator("#id_name_helptext")).to_contain_text("agency.domain.event, like irs.tax_policy.updated")

    name = page.locator("#id_name")
    said = page.locator("#name-check")
    name.fill("irs.estimated_tax.dlq")
    expect(said).to_contain_text("reserved for dead letters")
    expect(name).to_have_attribute("aria-invalid", "true")
    name.fill("tax-policy")
    expect(said).to_contain_text("is taken")
    name.fill("irs.estimated_tax.updated")
    expect(said).to_contain_text("follows the naming rule and is free")
    expect(said).not_to_contain_text("reserved")
    expect(name).not_to_have_attribute("aria-invalid", "true")

    page.fill("#id_description", "Quarterly estimated tax rates.")
    page.fill("#id_stream_retention", "50000")
    page.fill("#id_type_name", "estimated_tax.updated")
    page.fill("#id_schema", json.dumps(SCHEMA, indent=2))
    page.get_by_role("button", name="Create the topic").click()

    expect(page).to_have_url("/topics/irs.estimated_tax.updated/")
    expect(page.locator("h1")).to_have_text("irs.estimated_tax.updated")
    expect(page.locator(".messages")).to_contain_text("Created irs.estimated_tax.updated")
    expect(page.get_by_role("heading", level=3)).to_contain_text("estimated_tax.updated")
    expect(page.locator("table.schema")).to_contain_text("The quarterly rate")
    topic = Topic.objects.get(name="irs.estimated_tax.updated")
    assert (topic.description, topic.stream_retention) == ("Quarterly estimated tax rates.", 50_000)
    assert SchemaVersion.objects.get(event_type__topic=topic).schema == SCHEMA
    assert browser_log.errors == []


def test_a_refused_schema_is_shown_at_its_field_with_everything_typed_kept(page: Page, browser_log: BrowserLog) -> None:
    sign_in(page, "admin")
    page.goto("/topics/new/")
    page.fill("#id_name", "irs.estimated_tax.updated")
    page.fill("#id_type_name", "estimated_tax.updated")
    page.fill("#id_schema", '{"type": "objekt"}')
    page.get_by_role("button", name="Create the topic").click()

    expect(page.locator("#error-summary")).to_contain_text("not a valid JSON Schema")
    expect(page.locator("#id_schema_error")).to_contain_text("not a valid JSON Schema")
    expect(page.locator("#id_schema")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#id_name")).to_have_value("irs.estimated_tax.updated")
    assert not Topic.objects.filter(name="irs.estimated_tax.updated").exists()
    assert browser_log.errors == []


def test_a_bus_admin_edits_a_topic_on_its_page(page: Page, browser_log: BrowserLog) -> None:
    sign_in(page, "admin")
    page.goto("/topics/tax-policy/")
    page.get_by_text("Edit the topic").click()
    page.fill("#edit_description", "The numbers every service must agree on.")
    page.get_by_role("button", name="Save the topic").click()

    expect(page.locator(".messages")).to_contain_text("Saved tax-policy")
    expect(page.locator("main")).to_contain_text("The numbers every service must agree on.")
    assert browser_log.errors == []
