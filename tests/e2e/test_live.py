"""Live traffic in headless Chromium, through the real ASGI server and a running bus worker."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import DEMO_PASSWORD
from tests.e2e.conftest import BrowserLog, sign_in
from tests.support import (
    ROOT,
    OutputWatcher,
    RedisServer,
    free_port,
    manage,
    manage_background,
    manage_env,
    passwords_for_another_process,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("demo_committed", "bus")


@pytest.fixture
def asgi_url(suite_redis: RedisServer) -> Iterator[str]:
    """Uvicorn serving the ASGI app (pages and websockets) on the tests' database, and a bus worker beside it."""
    import urllib.request

    passwords_for_another_process(DEMO_PASSWORD)
    port = free_port()
    env = manage_env(suite_redis.url(0))
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "hmsadmin.asgi:application", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env=env,
    )
    worker = OutputWatcher(manage_background("bus_worker", redis_url=suite_redis.url(0)))
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:  # noqa: S310 (our own server)
                return response.status == 200
        except OSError:
            return False

    try:
        wait_for(answers, timeout=20, what="uvicorn to answer")
        worker.wait_for_line("bus worker", timeout=20)
        yield url
    finally:
        worker.stop()
        server.terminate()
        server.wait(timeout=10)


def _publish(payload: dict, suite_redis: RedisServer) -> str:
    done = manage("publish", "tax-policy", "tax_policy.updated", json.dumps(payload), redis_url=suite_redis.url(0))
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split()[0]  # the event id it prints first


def _watching_live(page: Page, asgi_url: str) -> None:
    """Policy on the live page, its feed connected."""
    sign_in(page, "policy", base=asgi_url)
    page.goto(f"{asgi_url}/live/")
    expect(page.locator("#connection")).to_have_text("live")


def test_an_event_published_from_the_command_line_appears_within_a_second(
    page: Page, browser_log: BrowserLog, asgi_url: str, suite_redis: RedisServer
):
    _watching_live(page, asgi_url)

    event_id = _publish({"standard_deduction": 15000}, suite_redis)

    row = page.locator(f'tr.event[data-id="{event_id}"]')
    expect(row).to_be_visible(timeout=1000)
    expect(row).to_contain_text('{"standard_deduction":15000}')
    expect(row).to_contain_text("tax_policy.updated")
    assert browser_log.errors == []


def test_markup_in_a_payload_is_shown_as_text_and_never_runs(
    page: Page, browser_log: BrowserLog, asgi_url: str, suite_redis: RedisServer
):
    _watching_live(page, asgi_url)
    hostile = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'

    event_id = _publish({"standard_deduction": 1, "note": hostile}, suite_redis)

    row = page.locator(f'tr.event[data-id="{event_id}"]')
    expect(row).to_contain_text('<img src=x onerror=\\"window.pwned=1\\">')
    assert row.locator("img, script").count() == 0
    assert page.evaluate("window.pwned === undefined")
    row.click()
    expect(page.locator("h1")).to_contain_text(event_id)
    expect(page.locator("#envelope")).to_contain_text("<script>window.pwned=2</script>")
    assert page.evaluate("window.pwned === undefined")
    assert browser_log.errors == []


def test_the_dead_letter_page_goes_live_and_shows_a_new_dead_letter_as_text(
    page: Page, browser_log: BrowserLog, asgi_url: str, suite_redis: RedisServer, bus
):
    sign_in(page, "policy", base=asgi_url)
    page.goto(f"{asgi_url}/dlq/")
    expect(page.locator("#connection")).to_have_text("live")

    # A seed-style publisher's invalid event: the worker's tap dead-letters it and fans it out.
    envelope = {"id": "bad-1", "type": "<b>x</b>", "timestamp": 1.0, "payload": {"standard_deduction": 1}}
    bus.xadd("stream:tax-policy", {"event": json.dumps(envelope)})

    row = page.locator("#letters tr.letter.new")
    expect(row).to_contain_text("/type unknown event type '<b>x</b>' on topic 'tax-policy'")
    expect(row.locator("td").nth(2)).to_have_attribute("data-label", "Topic")  # a card on a phone, labelled
    assert row.locator("b").count() == 0
    assert browser_log.errors == []


def test_letters_of_one_cause_are_replayed_in_one_bulk_run_once_the_schema_is_fixed(
    page: Page, browser_log: BrowserLog, asgi_url: str, suite_redis: RedisServer
):
    """A too-strict version dead-letters 30 different values with one cause; one run replays them all."""
    from busapp.actions.publishing import event_publish_batch
    from busapp.actions.registry import schema_version_create
    from busapp.models import EventType

    event_type = EventType.objects.get(topic__name="tax-policy", name="tax_policy.updated")
    schema = json.loads((ROOT / "schemas/tax_policy.json").read_text())
    too_strict = json.loads(json.dumps(schema))
    too_strict["properties"]["standard_deduction"]["maximum"] = 100000
    schema_version_create(event_type=event_type, schema=too_strict, actor="admin", compatibility="none")
    items = [{"type": "tax_policy.updated", "payload": {"standard_deduction": 150000 + 1000 * n}} for n in range(30)]
    assert len(event_publish_batch(topic="tax-policy", items=items, actor="external").dead_letters) == 30
    schema_version_create(event_type=event_type, schema=schema, actor="admin", compatibility="none")

    sign_in(page, "admin", base=asgi_url)
    page.goto(f"{asgi_url}/dlq/")
    group = page.locator("tr.group")
    expect(group).to_have_count(1)
    expect(group).to_contain_text("/payload/standard_deduction: must be 100000 or less")
    expect(group.locator("td.values")).to_contain_text("179000, 178000, 177000")
    page.get_by_role("button", name="Replay all 30…").click()
    expect(page.locator("p.estimate")).to_contain_text("30 open dead letters match the type tax_policy.updated")
    expect(page.locator("p.estimate")).to_contain_text("30 pass the current schema")
    page.fill("#rate_per_second", "20")
    page.locator("#start").click()

    expect(page.locator("#bulk-status")).to_have_text("done", timeout=15_000)
    bar = page.locator("#bulk-progress")
    expect(bar).to_have_attribute("value", "30")
    expect(bar).to_have_attribute("max", "30")
    expect(page.locator("table.report tbody tr")).to_have_count(30)
    expect(page.locator("table.report tbody")).not_to_contain_text("skipped")
    assert browser_log.errors == []


def test_a_bulk_run_at_one_a_second_goes_at_one_a_second_and_says_how_long_is_left(
    page: Page, browser_log: BrowserLog, asgi_url: str, suite_redis: RedisServer
):
    """Counts over time: never more than the first letter plus one a second since the start (and a tick of slack)."""
    import time

    from busapp.actions.dead_letters import dead_letter_create
    from busapp.errors import FieldError
    from busapp.models import Source, Topic

    topic = Topic.objects.get(name="tax-policy")
    error: list[FieldError] = [{"path": "/payload/standard_deduction", "message": "refused by an older schema"}]
    for deduction in range(5):
        body = json.dumps({"type": "tax_policy.updated", "payload": {"standard_deduction": deduction}})
        dead_letter_create(topic=topic, raw=body, errors=error, source=Source.EXTERNAL, actor="external")

    sign_in(page, "admin", base=asgi_url)
    page.goto(f"{asgi_url}/dlq/")
    page.get_by_role("button", name="Replay all 5…").click()
    page.fill("#rate_per_second", "1")
    started = time.monotonic()
    page.locator("#start").click()
    expect(page.locator("#bulk-left")).to_contain_text("s left")

    samples = []
    deadline = started + 20
    while time.monotonic() < deadline and page.locator("#bulk-status").text_content() == "running":
        handled = int(page.locator("#bulk-handled").text_content() or "0")
        samples.append((time.monotonic() - started, handled))
        page.wait_for_timeout(200)  # a sample every 200 ms: what is measured, not waited for

    expect(page.locator("#bulk-status")).to_have_text("done", timeout=10_000)
    assert all(handled <= 2 + int(elapsed) for elapsed, handled in samples), samples
    assert len({handled for _, handled in samples}) >= 3, samples  # seen to move, not all at once
    expect(page.locator("table.report tbody tr")).to_have_count(5)
    assert browser_log.errors == []


PHONE_WIDTH = 375


def test_the_dead_letters_page_on_a_phone_keeps_its_actions_in_reach(
    page: Page, browser_log: BrowserLog, asgi_url: str, suite_redis: RedisServer
):
    """A phone's screen (375 px): the menu folds, tables become cards, the dead letters' actions stay in reach."""
    from busapp.actions.dead_letters import dead_letter_create
    from busapp.models import Source, Topic

    topic = Topic.objects.get(name="tax-policy")
    for deduction in (-5, -7, -9):
        body = json.dumps({"type": "tax_policy.updated", "payload": {"standard_deduction": deduction}})
        error = [{"path": "/payload/standard_deduction", "message": "must be 0 or more"}]
        dead_letter_create(topic=topic, raw=body, errors=error, source=Source.API, actor="service:efile")  # type: ignore[arg-type]
    page.set_viewport_size({"width": PHONE_WIDTH, "height": 740})

    sign_in(page, "admin", base=asgi_url)
    page.goto(f"{asgi_url}/dlq/")

    nav = page.locator("#main-nav")
    expect(nav).to_be_hidden()  # folded behind the menu button
    page.get_by_role("button", name="Menu").click()
    expect(nav).to_be_visible()
    expect(page.locator(".menu-toggle")).to_have_attribute("aria-expanded", "true")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE_WIDTH  # nothing runs off the side

    replay = page.get_by_role("button", name="Replay all 3…")
    box = replay.bounding_box()
    assert box is not None
    assert box["x"] >= 0
    assert box["x"] + box["width"] <= PHONE_WIDTH  # in reach without scrolling sideways
    cause = page.locator("tr.group td.cause")
    assert cause.evaluate("cell => getComputedStyle(cell, '::before').content") == '"Cause: "'  # a card, labelled
    replay.click()
    expect(page.locator("p.estimate")).to_contain_text("3 open dead letters match")
    assert browser_log.errors == []


def test_a_dead_letter_shows_in_red_among_the_events_with_the_same_badges_as_history(
    page: Page, browser_log: BrowserLog, asgi_url: str, suite_redis: RedisServer
):
    _watching_live(page, asgi_url)

    event_id = _publish({"standard_deduction": 15000}, suite_redis)
    refused = manage(
        "publish", "tax-policy", "tax_policy.updated", '{"standard_deduction": -5}', redis_url=suite_redis.url(0)
    )
    assert refused.returncode != 0  # the command line refuses it, and keeps it as a dead letter

    event_row = page.locator(f'tr.event[data-id="{event_id}"]')
    expect(event_row.locator("span.status.published")).to_have_text("published")
    expect(event_row).to_contain_text("command line")  # the source in words, as history says it
    letter_row = page.locator("tr.event.dead-lettered")
    expect(letter_row).to_have_count(1)
    expect(letter_row.locator("span.status.dead-lettered")).to_have_text("dead-lettered")
    expect(letter_row).to_contain_text("/payload/standard_deduction: must be 0 or more")
    expect(letter_row).to_contain_text('{"standard_deduction": -5}')
    red = letter_row.locator("td").first.evaluate("cell => getComputedStyle(cell).backgroundColor")
    plain = event_row.locator("td").first.evaluate("cell => getComputedStyle(cell).backgroundColor")
    assert red == "rgb(253, 240, 239)" != plain  # the product's red wash, on the dead letter only

    letter_row.click()
    expect(page.locator("h1")).to_contain_text("Dead letter")
    page.goto(f"{asgi_url}/events/?topic=tax-policy")
    history_badge = page.locator(f'tr:has(a[href="/events/{event_id}/"]) span.status')
    expect(history_badge).to_have_text("published")
    expect(history_badge).to_have_class("status published")
    assert browser_log.errors == []
