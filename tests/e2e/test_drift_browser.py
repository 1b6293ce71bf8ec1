"""The topic page's "In force now" in headless Chromium: who applied the new value, and the overdue service, live.

Real processes: uvicorn, a bus worker, and the demo's four services on hms_subscriber. The page is
opened once and never reloaded; what it shows changes as the services' receipts and deadlines do.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import DEMO_PASSWORD
from tests.e2e.conftest import BrowserLog, sign_in
from tests.support import (
    OutputWatcher,
    RedisServer,
    deadlines_set,
    publish_deduction,
    service_start,
    services_running,
    web_and_worker,
)

pytestmark = pytest.mark.usefixtures("demo_committed", "bus")

SERVICES = ("e-file", "withholding-calculator", "mobile-tax-app", "analytics-dashboard")
SILENT = "mobile-tax-app"
DEADLINE_SECONDS = 3  # room for three services to apply on a loaded machine; the silent one waits it out
# A deadline passing shows within about 2 s (the page looks again just after it; the worker checks every second).
SHOWN_WITHIN_MS = DEADLINE_SECONDS * 1000 + 8_000


@pytest.fixture
def asgi_url(demo_committed: None, suite_redis: RedisServer) -> Iterator[str]:
    """The web server and a bus worker, the demo's tax-policy deadlines shortened to DEADLINE_SECONDS."""
    deadlines_set(topic="tax-policy", seconds=DEADLINE_SECONDS)
    with web_and_worker(suite_redis.url(0), DEMO_PASSWORD) as url:
        yield url


@pytest.fixture
def services(suite_redis: RedisServer) -> Iterator[dict[str, OutputWatcher]]:
    """The four services running (each in its consumer group); every process stopped at the end."""
    with services_running(SERVICES, redis_url=suite_redis.url(0)) as running:
        yield running


def test_the_topic_page_shows_the_new_value_who_applied_it_and_the_overdue_service_without_a_reload(
    page: Page, browser_log: BrowserLog, asgi_url: str, services: dict[str, OutputWatcher], suite_redis: RedisServer
):
    sign_in(page, "auditor", base=asgi_url)
    page.goto(f"{asgi_url}/topics/tax-policy/")
    in_force = page.locator('#in-force section.in-force[data-type="tax_policy.updated"]')
    expect(in_force).to_contain_text("Nothing published yet")
    expect(page.locator("#applied-connection")).to_have_text("live")
    page.evaluate("window.sameDocument = true")  # a reload or a navigation would lose it

    def row(name: str):
        return in_force.locator(f'tr.service[data-subscriber="{name}"]')

    earlier = publish_deduction(14600)
    expect(in_force).to_contain_text(str(earlier.envelope_id))
    for name in SERVICES:
        expect(row(name)).to_have_class("service applied")

    silent = services[SILENT]
    silent.process.send_signal(signal.SIGTERM)
    assert silent.process.wait(timeout=10) == 0

    event = publish_deduction(15000)

    expect(in_force).to_contain_text(str(event.envelope_id))
    expect(in_force).to_contain_text('{"standard_deduction": 15000}')
    for name in SERVICES:
        if name != SILENT:
            expect(row(name)).to_have_class("service applied")
    expect(row(SILENT)).to_have_class("service overdue", timeout=SHOWN_WITHIN_MS)
    drift = in_force.locator("p.drift")
    expect(drift).to_have_count(1)
    expect(drift).to_contain_text(f"Drift: {SILENT} still on standard_deduction 14600; 15000 in force since")
    expect(drift).to_contain_text("overdue.")

    restarted = service_start(SILENT, consumer=f"{SILENT}-2", redis_url=suite_redis.url(0))
    try:
        expect(row(SILENT)).to_have_class("service applied")
        expect(drift).to_have_count(0)
    finally:
        restarted.stop()

    assert page.evaluate("window.sameDocument === true")
    assert restarted.count("New deduction = 15000") == 1
    assert browser_log.errors == []
