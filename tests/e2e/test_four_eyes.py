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
