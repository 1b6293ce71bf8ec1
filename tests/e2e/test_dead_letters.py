"""Fixing a dead letter in the browser: the form is filled from what arrived; replay sends the fix once."""

from __future__ import annotations

import json

import pytest
import redis
from playwright.sync_api import Page, expect

from busapp.actions.dead_letters import dead_letter_create
from busapp.models import DeadLetterStatus, Source, Topic
from tests.e2e.conftest import BrowserLog, sign_in
from tests.support import comma_number_letter

pytestmark = pytest.mark.usefixtures("demo_committed")


def test_an_admin_fixes_a_dead_letter_in_the_form_and_replays_it_to_its_topic(
    page: Page, browser_log: BrowserLog, bus: redis.Redis
):
    letter = dead_letter_create(
        topic=Topic.objects.get(name="tax-policy"),
        raw=json.dumps({"type": "tax_policy.updated", "payload": {"standard_deduction": -15000}}),
        errors=[{"path": "/payload/standard_deduction", "message": "must be 0 or more"}],
        source=Source.CLI,
        actor="cli:test",
    )
    subscriber = bus.pubsub()
    subscriber.subscribe("tax-policy")
    assert subscriber.get_message(timeout=5) is not None  # the subscribe confirmation

    sign_in(page, "admin")
    page.goto(f"/dlq/{letter.pk}/")
    field = page.locator('[name="/payload/standard_deduction"]')
    expect(field).to_have_value("-15000")  # filled from what arrived
    field.fill("15000")
    page.locator("#replay").click()

    expect(page.locator("dl.facts")).to_contain_text(f"dead letter #{letter.pk}")
    message = subscriber.get_message(timeout=5)
    assert message is not None, "the subscriber on tax-policy heard nothing"
    heard = json.loads(message["data"])
    assert (heard["payload"], heard["source"]) == ({"standard_deduction": 15000}, "replay")
    letter.refresh_from_db()
    assert letter.status == DeadLetterStatus.REPLAYED
    assert letter.replay_event is not None
    assert letter.replay_event.envelope_id == heard["id"]
    assert browser_log.errors == []
    subscriber.close()


def test_text_that_arrived_for_a_number_is_shown_at_its_field_with_its_error_and_can_be_fixed(
    page: Page, browser_log: BrowserLog, bus: redis.Redis
):
    letter = comma_number_letter()

    sign_in(page, "admin")
    page.goto(f"/dlq/{letter.pk}/")
    field = page.get_by_label("Standard deduction")
    expect(field).to_have_value("15,000")  # a number input would have shown nothing
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#f-payload-standard_deduction-error")).to_have_text("must be a number")
    field.fill("15000")
    page.locator("#replay").click()

    expect(page.locator("dl.facts")).to_contain_text(f"dead letter #{letter.pk}")
    letter.refresh_from_db()
    assert letter.status == DeadLetterStatus.REPLAYED
    assert browser_log.errors == []
