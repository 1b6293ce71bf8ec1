"""Four-eyes in the browser: one publisher asks, a second one approves, and only then does Redis hear it."""

from __future__ import annotations

import json

import pytest
import redis
from playwright.sync_api import Page, expect

from busapp.models import PublishRequest, PublishRequestStatus
from busapp.publishing import stream_key
from tests.e2e.conftest import BrowserLog, sign_in

pytestmark = pytest.mark.usefixtures("demo_committed")


def test_a_sensitive_publish_goes_out_only_when_a_second_person_approves_it(
    page: Page, browser_log: BrowserLog, bus: redis.Redis
):
    subscriber = bus.pubsub()
    subscriber.subscribe("irs.withholding")
    assert subscriber.get_message(timeout=5) is not None  # the subscribe confirmation

    sign_in(page, "policy")
    page.goto("/topics/irs.withholding/publish/")
    page.locator('[name="/payload/tax_year"]').fill("2027")
    page.locator('[name="/payload/effective_date"]').fill("2027-01-01")
    page.locator('[name="/payload/brackets/0/up_to"]').fill("11000")
    page.locator('[name="/payload/brackets/0/rate"]').fill("0.1")
    page.get_by_role("button", name="Preview").click()
    page.get_by_role("button", name="Send for approval").click()
    expect(page.locator("h1")).to_contain_text("awaiting approval")
    expect(page.locator("#approve")).to_have_count(0)  # nobody approves their own request
    assert bus.xlen(stream_key("irs.withholding")) == 0
    assert subscriber.get_message(timeout=0.5) is None

    page.get_by_role("button", name="Sign out").click()
    sign_in(page, "policy2")
    page.locator("table.approvals").get_by_role("link", name="Review").click()
    page.fill("#reason", "matches the published IRS table")
    page.locator("#approve").click()

    expect(page.locator("h1")).to_contain_text("published")
    message = subscriber.get_message(timeout=5)
    assert message is not None, "the subscriber on irs.withholding heard nothing"
    heard = json.loads(message["data"])
    waiting = PublishRequest.objects.get()
    assert (waiting.status, heard["id"]) == (PublishRequestStatus.PUBLISHED, waiting.envelope_id)
    assert heard["payload"]["brackets"] == [{"up_to": 11000, "rate": 0.1}]
    assert browser_log.errors == []
    subscriber.close()


def test_the_approver_is_counted_in_the_navigation_and_judges_the_change_against_the_event_in_force(
    page: Page, browser_log: BrowserLog, bus: redis.Redis
):
    import uuid

    from django.contrib.auth.models import User

    from busapp.actions.requests import publish_request_create
    from tests.support import approved_withholding_event

    approved_withholding_event()  # brackets: [{"up_to": 10, "rate": 0.1}]
    publish_request_create(
        topic="irs.withholding",
        event_type="withholding_table.published",
        payload={"tax_year": 2027, "effective_date": "2027-01-01", "brackets": [{"up_to": 10, "rate": 0.12}]},
        actor=User.objects.get(username="policy"),
        envelope_id=uuid.uuid4(),
    )

    sign_in(page, "policy2")
    badge = page.locator("#nav-waiting")
    expect(badge).to_contain_text("1")
    page.get_by_role("link", name="Requests").click()
    page.locator("#to-decide").get_by_role("link").first.click()

    changed = page.locator("#diff tr.changed")
    expect(changed).to_have_count(1)
    expect(changed).to_contain_text("brackets.0.rate")
    expect(changed).to_contain_text("0.1")
    expect(changed).to_contain_text("0.12")
    expect(page.locator("#diff tr.same")).to_have_count(3)

    page.locator("#cancel").click()  # cancelling asks first: a reason, then a yes
    expect(page.locator("#cancel-reason")).to_be_visible()
    page.locator("#cancel-reason").fill("the rate is next year's")
    page.locator("#cancel-confirm").click()
    expect(page.locator(".messages")).to_contain_text("Cancelled")
    expect(page.locator("h1 .status")).to_have_text("cancelled")
    expect(page.locator("#nav-waiting")).to_have_count(0)  # nothing waits for policy2 any more
    assert browser_log.errors == []
