"""An auditor searches the event history in headless Chromium: payload conditions, one event's record, a CSV export."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Locator, Page, expect

from busapp.actions.publishing import event_publish_batch
from busapp.history import EXPORT_COLUMNS
from busapp.models import Event, Source
from tests.e2e.conftest import BrowserLog, sign_in

pytestmark = pytest.mark.usefixtures("demo_committed")

DEDUCTIONS = (12000, 14600, 15000, 15001, 20000)
CONDITION = "standard_deduction = 15000"


def _publish_deductions() -> list[Event]:
    """Events on tax-policy, one per deduction, published as a command-line batch (committed: the server reads them)."""
    items = [{"type": "tax_policy.updated", "payload": {"standard_deduction": amount}} for amount in DEDUCTIONS]
    outcome = event_publish_batch(topic="tax-policy", items=items, actor="cli:test", source=Source.CLI)
    assert outcome.dead_letters == []
    return outcome.events


def _conditions(page: Page) -> Locator:
    return page.get_by_label("Payload conditions")


def _show(page: Page) -> int:
    """Submit the filter form and return the status of the page it leads to."""
    with page.expect_response(lambda response: "/events/" in response.url and response.request.method == "GET") as got:
        page.locator("form.filters").get_by_role("button", name="Show", exact=True).click()
    page.wait_for_load_state()
    return got.value.status


def test_an_auditor_filters_by_a_payload_condition_opens_the_record_and_exports_exactly_that_event(
    page: Page, browser_log: BrowserLog, bus: redis.Redis, tmp_path: Path
):
    events = _publish_deductions()
    wanted = next(event for event in events if event.payload == {"standard_deduction": 15000})

    sign_in(page, "auditor")
    page.goto("/events/")
    expect(page.locator("h1")).to_have_text("Event history")
    expect(page.locator("#history tbody tr")).to_have_count(len(DEDUCTIONS))  # unfiltered: every event

    _conditions(page).fill(CONDITION)
    assert _show(page) == 200

    rows = page.locator("#history tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("15000")
    expect(rows.first).to_contain_text("tax-policy")
    expect(rows.first).to_contain_text("tax_policy.updated")
    expect(_conditions(page)).to_have_value(CONDITION)  # the filter stays in the form
    filtered_url = page.url

    rows.first.get_by_role("link").first.click()
    expect(page).to_have_url(f"/events/{wanted.envelope_id}/")
    expect(page.locator("h1")).to_contain_text(wanted.envelope_id)
    envelope = json.loads(page.locator("#envelope").inner_text())
    assert envelope["id"] == wanted.envelope_id
    assert envelope["payload"] == {"standard_deduction": 15000}
    record = page.locator("#record")
    validation = record.locator("dt:text-is('Validation') + dd")
    expect(validation.locator(".status")).to_have_text("valid")
    expect(validation).to_contain_text("against schema v")
    expect(page.locator("#event-audit")).to_contain_text("event.publish_batch")
    expect(page.locator("#event-audit tbody tr", has_text="event.publish_batch")).to_contain_text("cli:test")

    page.go_back()
    expect(page).to_have_url(filtered_url)
    expect(page.locator("#history tbody tr")).to_have_count(1)
    export = page.locator("#export-csv")
    expect(export).to_have_attribute("download", "")
    with page.expect_download() as started:
        export.click()
    download = started.value
    assert download.failure() is None
    assert download.suggested_filename.startswith("hms-events-")
    assert download.suggested_filename.endswith(".csv")
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)

    exported = list(csv.reader(io.StringIO(saved.read_text(encoding="utf-8"))))
    assert exported[0] == list(EXPORT_COLUMNS)
    body = exported[1:]
    assert len(body) == 1, body
    row = dict(zip(EXPORT_COLUMNS, body[0], strict=True))
    assert row["envelope_id"] == wanted.envelope_id
    assert (row["topic"], row["type"], row["source"], row["publisher"]) == (
        "tax-policy",
        "tax_policy.updated",
        "cli",
        "cli:test",
    )
    assert json.loads(row["payload"]) == {"standard_deduction": 15000}
    assert browser_log.errors == []


def test_a_malformed_payload_condition_is_shown_under_its_field_and_nothing_breaks(
    page: Page, browser_log: BrowserLog, bus: redis.Redis
):
    _publish_deductions()
    sign_in(page, "auditor")
    page.goto("/events/")

    _conditions(page).fill("standard_deduction => 5")
    assert _show(page) == 400

    expect(page.locator("h1")).to_have_text("Event history")
    field = _conditions(page)
    expect(field).to_have_value("standard_deduction => 5")  # what was typed stays
    box = page.locator(".field", has=field)
    error = box.locator("p.error")
    expect(error).to_have_count(1)
    expect(error).to_contain_text("unknown operator")
    expect(error).to_contain_text("'=>'")
    field_box, error_box = field.bounding_box(), error.bounding_box()
    assert field_box is not None
    assert error_box is not None
    assert error_box["y"] >= field_box["y"] + field_box["height"]  # under the field, not beside it
    expect(page.locator("#history")).to_have_count(0)  # no table from a filter that could not be read

    # The page still works: a correct condition is then accepted.
    field.fill("standard_deduction >= 15000")
    assert _show(page) == 200
    expect(page.locator("#history tbody tr")).to_have_count(3)
    expect(page.locator("p.error")).to_have_count(0)
    assert browser_log.errors == []


def test_two_conditions_on_one_line_are_refused_and_the_field_picker_writes_them_one_a_line(
    page: Page, browser_log: BrowserLog, bus: redis.Redis
):
    _publish_deductions()
    sign_in(page, "auditor")
    page.goto("/events/?topic=tax-policy")

    _conditions(page).fill("standard_deduction >= 15000 and publisher = x")
    assert _show(page) == 400
    error = page.locator(".field", has=_conditions(page)).locator("p.error")
    expect(error).to_contain_text("did you mean two lines?")
    expect(page.locator("#history")).to_have_count(0)  # no silent "No events match"

    _conditions(page).fill("")
    page.select_option("#field-picker", "standard_deduction")
    expect(_conditions(page)).to_have_value("standard_deduction = ")
    expect(_conditions(page)).to_be_focused()
    page.keyboard.type("15000")
    assert _show(page) == 200
    expect(page.locator("#history tbody tr")).to_have_count(1)
    assert browser_log.errors == []
