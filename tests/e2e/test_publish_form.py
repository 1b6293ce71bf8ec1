"""Policy staff publish through the real form in headless Chromium: sign in, fill, preview, confirm; Redis hears it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from playwright.sync_api import Locator, Page, expect

from busapp.models import Event
from busapp.publishing import stream_key
from tests.conftest import DEMO_PASSWORD
from tests.e2e.conftest import BrowserLog, sign_in
from tests.support import OutputWatcher, RedisServer, seed_script, wait_for

pytestmark = pytest.mark.usefixtures("demo_committed")

TAX_FORM = "/topics/tax-policy/publish/"
WITHHOLDING_FORM = "/topics/irs.withholding/publish/"
DEDUCTION = "/payload/standard_deduction"
BRACKETS = "fieldset.array[data-array='/payload/brackets']"


@pytest.fixture
def subscriber(bus: redis.Redis) -> Iterator[Any]:
    """A seed-style subscriber on channel tax-policy, its subscription confirmed before the test starts."""
    pubsub = bus.pubsub()
    pubsub.subscribe("tax-policy")
    confirmation = pubsub.get_message(timeout=5)
    assert confirmation is not None
    assert confirmation["type"] == "subscribe"
    yield pubsub
    pubsub.close()


@pytest.fixture
def refund_service(bus: redis.Redis, suite_redis: RedisServer, subscriber: Any) -> Iterator[OutputWatcher]:
    """The seed chapter's refund_service.py, unchanged, subscribed to tax-policy beside ``subscriber``."""
    watcher = OutputWatcher(seed_script("refund_service.py", suite_redis.port))
    wait_for(lambda: bus.pubsub_numsub("tax-policy")[0][1] == 2, timeout=10, what="refund_service to subscribe")
    yield watcher
    watcher.stop()


def _field(page: Page, name: str) -> Locator:
    """The input named by its JSON pointer."""
    return page.locator(f'[name="{name}"]')


def _previewed_envelope(page: Page) -> dict[str, Any]:
    """The envelope the preview page shows."""
    return json.loads(page.locator("pre.json.envelope").inner_text())


def _preview(page: Page) -> int:
    """Click Preview and return the status of the page it leads to."""
    with page.expect_response(lambda response: response.request.method == "POST") as answer:
        page.get_by_role("button", name="Preview").click()
    page.wait_for_load_state()
    return answer.value.status


def test_policy_staff_publish_15000_through_the_form_and_the_seeds_subscribers_hear_it(
    page: Page, browser_log: BrowserLog, subscriber: Any, refund_service: OutputWatcher
):
    page.goto(TAX_FORM)
    expect(page).to_have_url(f"/accounts/login/?next={TAX_FORM}")  # signed out: sent to sign in first
    page.fill("#id_username", "policy")
    page.fill("#id_password", DEMO_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(TAX_FORM)
    expect(page.locator("h1")).to_have_text("Publish to tax-policy")

    _field(page, DEDUCTION).fill("15000")
    assert _preview(page) == 200
    expect(page.locator("h1")).to_have_text("Check before it goes out")
    previewed = _previewed_envelope(page)
    assert previewed["payload"] == {"standard_deduction": 15000}
    assert subscriber.get_message(timeout=0.2) is None  # a preview sends nothing

    page.locator("#confirm").click()
    expect(page.locator("h1")).to_have_text("Published")

    shown_id = page.locator("code.event-id").inner_text()
    message = subscriber.get_message(timeout=5)
    assert message is not None, "the subscriber on tax-policy heard nothing"
    heard = json.loads(message["data"])
    assert heard["payload"] == {"standard_deduction": 15000}
    assert (heard["id"], heard["type"], heard["source"], heard["publisher"]) == (
        shown_id,
        "tax_policy.updated",
        "form",
        "policy",
    )
    assert heard["id"] == previewed["id"]
    refund_service.wait_for_line("New deduction = 15000")
    assert browser_log.errors == []


def test_an_out_of_range_deduction_is_shown_under_its_field_and_nothing_reaches_redis(
    page: Page, browser_log: BrowserLog, bus: redis.Redis, subscriber: Any
):
    sign_in(page, "policy")
    page.goto(TAX_FORM)

    _field(page, DEDUCTION).fill("-5")
    status = _preview(page)

    assert status == 400
    field = _field(page, DEDUCTION)
    error = page.locator("#f-payload-standard_deduction-error")
    expect(error).to_have_text("must be 0 or more")
    expect(error).to_have_class("error")
    expect(field).to_have_value("-5")  # what was typed stays
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(field).to_have_attribute("aria-describedby", "f-payload-standard_deduction-error")
    # Next to the field: in the same field box, drawn below the input and not beside another one.
    expect(page.locator(".field", has=field).locator("p.error")).to_have_text("must be 0 or more")
    field_box, error_box = field.bounding_box(), error.bounding_box()
    assert field_box is not None
    assert error_box is not None
    assert error_box["y"] >= field_box["y"] + field_box["height"]
    assert error_box["y"] - (field_box["y"] + field_box["height"]) < 60
    # The page opens on its error summary, titled as an error; its link leads to the field.
    summary = page.locator("#error-summary")
    expect(summary).to_be_focused()
    expect(page).to_have_title("Error: Publish to tax-policy · HMS Bus Admin")
    summary.get_by_role("link", name="Standard deduction: must be 0 or more").click()
    expect(page).to_have_url(re.compile(r"#f-payload-standard_deduction$"))
    assert bus.xlen(stream_key("tax-policy")) == 0
    assert subscriber.get_message(timeout=0.5) is None
    assert Event.objects.count() == 0
    assert browser_log.errors == []


def test_bracket_rows_are_added_and_removed_and_the_preview_holds_each_remaining_rows_values(
    page: Page, browser_log: BrowserLog
):
    sign_in(page, "policy")
    page.goto(WITHHOLDING_FORM)
    brackets = page.locator(BRACKETS)
    rows = brackets.locator("li.row")
    expect(rows).to_have_count(1)

    brackets.get_by_role("button", name="Add a row").click()

    expect(rows).to_have_count(2)
    expect(rows.nth(1).locator('[name="/payload/brackets/1/up_to"]')).to_be_visible()
    expect(rows.nth(1).locator('[name="/payload/brackets/1/rate"]')).to_be_visible()
    expect(_field(page, "/payload/brackets/1/up_to")).to_be_focused()

    brackets.get_by_role("button", name="Add a row").click()
    expect(rows).to_have_count(3)
    rows.nth(1).get_by_role("button", name="Remove").click()

    expect(rows).to_have_count(2)
    expect(page.locator('[name^="/payload/brackets/1/"]')).to_have_count(0)
    expect(_field(page, "/payload/brackets/2/up_to")).to_be_visible()
    expect(_field(page, "/payload/brackets/2/up_to")).to_be_focused()  # the keyboard stays in the array
    numbered = rows.nth(1).evaluate("row => getComputedStyle(row, '::before').content")
    assert numbered.startswith('"Row "')  # rows are numbered: Row 1, Row 2
    ids = page.eval_on_selector_all("form.publish [id]", "elements => elements.map(element => element.id)")
    assert len(ids) == len(set(ids)), f"duplicate ids after adding rows: {sorted(ids)}"

    _field(page, "/payload/tax_year").fill("2027")
    _field(page, "/payload/effective_date").fill("2027-01-01")
    _field(page, "/payload/brackets/0/up_to").fill("11000")
    _field(page, "/payload/brackets/0/rate").fill("0.1")
    _field(page, "/payload/brackets/2/up_to").fill("44725")
    _field(page, "/payload/brackets/2/rate").fill("0.12")
    assert _preview(page) == 200

    payload = _previewed_envelope(page)["payload"]
    assert payload["brackets"] == [{"up_to": 11000, "rate": 0.1}, {"up_to": 44725, "rate": 0.12}]
    assert (payload["tax_year"], payload["effective_date"]) == (2027, "2027-01-01")
    assert browser_log.errors == []


def test_no_page_of_the_flow_logs_a_console_error_or_a_csp_violation(
    page: Page, browser_log: BrowserLog, bus: redis.Redis
):
    visited: list[str] = []

    def seen() -> None:
        visited.append(page.url)
        assert browser_log.errors == [], f"after {visited}"

    page.goto("/accounts/login/")
    seen()
    sign_in(page, "policy")
    seen()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Topics").click()
    expect(page).to_have_url("/topics/")
    seen()
    page.goto("/topics/tax-policy/")
    seen()
    page.goto(TAX_FORM)
    seen()
    _field(page, DEDUCTION).fill("-5")
    assert _preview(page) == 400
    seen()
    _field(page, DEDUCTION).fill("15000")
    assert _preview(page) == 200
    seen()
    page.get_by_role("button", name="Change it").click()
    expect(_field(page, DEDUCTION)).to_have_value("15000")
    seen()
    assert _preview(page) == 200
    page.locator("#confirm").click()
    expect(page.locator("h1")).to_have_text("Published")
    seen()
    page.get_by_role("link", name="Its history record").click()
    page.wait_for_load_state()
    seen()
    page.goto(WITHHOLDING_FORM)
    page.locator(BRACKETS).get_by_role("button", name="Add a row").click()
    page.locator(BRACKETS).locator("li.row").last.get_by_role("button", name="Remove").click()
    with page.expect_navigation():  # publish.js submits the type picker when a type is picked
        page.get_by_label("Event type").select_option("withholding_table.published")
    expect(page).to_have_url(f"{WITHHOLDING_FORM}?type=withholding_table.published")
    seen()


def test_the_console_watch_reports_an_inline_script_the_csp_refuses(page: Page, browser_log: BrowserLog):
    """The guard of the test above: a CSP violation must show up, or that test could never fail."""
    page.goto("/accounts/login/")

    with page.expect_console_message(lambda message: message.type == "error"):
        page.evaluate("""() => {
            const script = document.createElement("script");
            script.textContent = "window.smuggled = true";
            document.body.appendChild(script);
        }""")

    assert page.evaluate("window.smuggled === undefined")
    assert any("Content Security Policy" in error for error in browser_log.errors), browser_log.errors


def test_the_pages_name_an_icon_the_browser_can_load(page: Page):
    page.goto("/accounts/login/")

    named = page.locator("link[rel~=icon]")
    icon = named.first.get_attribute("href") if named.count() else "/favicon.ico"
    assert page.request.get(icon or "").status == 200, f"{icon} does not load"


def test_a_time_is_typed_in_utc_on_a_24_hour_clock_with_the_local_time_said_beside_it(browser: Any, live_server: Any):
    """Never a 12-hour picker next to a UTC label: ISO text, and what it is in New York for someone there."""
    context = browser.new_context(base_url=live_server.url, timezone_id="America/New_York", locale="en-US")
    page = context.new_page()
    try:
        sign_in(page, "policy")
        page.goto(TAX_FORM)
        when = page.get_by_label("Takes effect at (UTC, 24-hour, optional)")
        assert when.get_attribute("type") == "text"
        when.fill("2027-01-01 00:00")
        expect(page.locator("#effective_at-local")).to_have_text("= 2027-01-01 00:00 UTC, 19:00 on Dec 31 in New York")
        when.fill("2027-07-01 13:30")
        expect(page.locator("#effective_at-local")).to_have_text("= 2027-07-01 13:30 UTC, 09:30 in New York")
    finally:
        context.close()
