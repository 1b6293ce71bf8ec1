"""An outsider's event on a sensitive topic, in headless Chromium: the live row says "not approved", as text."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis
from playwright.sync_api import Page, expect

from tests.e2e.conftest import BrowserLog, sign_in
from tests.e2e.test_live import asgi_url  # noqa: F401 (the fixture: uvicorn and a bus worker)
from tests.support import WITHHOLDING_TABLE, wait_for

pytestmark = pytest.mark.usefixtures("demo_committed", "bus")


def _put_on_the_bus(bus: redis.Redis, topic: str, event_type: str, payload: dict) -> str:
    """What a seed-style publisher does: the seed's envelope on the topic's stream and channel."""
    envelope = json.dumps({"id": str(uuid.uuid4()), "type": event_type, "timestamp": time.time(), "payload": payload})
    bus.xadd(f"stream:{topic}", {"event": envelope})
    bus.publish(topic, envelope)
    return json.loads(envelope)["id"]


def test_the_live_row_of_an_unapproved_event_says_so_and_a_plain_one_does_not(
    page: Page,
    browser_log: BrowserLog,
    asgi_url: str,  # noqa: F811 (the imported fixture)
    bus: redis.Redis,
):
    sign_in(page, "auditor", base=asgi_url)
    page.goto(f"{asgi_url}/live/")
    expect(page.locator("#connection")).to_have_text("live")
    # "live" shows when the socket opens, before its subscription reaches the Channels layer;
    # an event faster than that would not be sent to the page (its gap-fill runs on reconnect).
    groups = [f"HMS.live.__group__topic.{topic}" for topic in ("irs.withholding", "tax-policy")]
    wait_for(lambda: all(count > 0 for _, count in bus.pubsub_numsub(*groups)), timeout=10, what="the page subscribed")

    unapproved = _put_on_the_bus(bus, "irs.withholding", "withholding_table.published", WITHHOLDING_TABLE)
    plain = _put_on_the_bus(bus, "tax-policy", "tax_policy.updated", {"standard_deduction": 1})

    marked = page.locator(f'tr.event[data-id="{unapproved}"]').first
    expect(marked.locator(".status.not-approved")).to_have_text("not approved", timeout=5000)
    unmarked = page.locator(f'tr.event[data-id="{plain}"]').first
    expect(unmarked).to_be_visible(timeout=5000)
    assert unmarked.locator(".not-approved").count() == 0
    # Heard on Pub/Sub and read from the stream, it may be drawn twice: every copy carries the mark.
    expect(page.locator(f'tr.event[data-id="{unapproved}"]:not(:has(.not-approved))')).to_have_count(0)
    assert browser_log.errors == []
