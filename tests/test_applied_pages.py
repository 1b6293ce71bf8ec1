"""The pages that say who applied what: a topic's values in force and drift, an event's services, the dashboard."""

from __future__ import annotations

import datetime as dt
import html
import re
from typing import Any

import pytest

from busapp.actions.drift import drift_advance
from busapp.models import Event
from tests.support import receipt_send, signed_in

pytestmark = pytest.mark.usefixtures("demo")


def _text(response: Any) -> str:
    """The page's words, each cell apart."""
    assert response.status_code == 200
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", response.content.decode())).split())


@pytest.fixture
def drifting(time_machine: Any, publish_on_bus: Any) -> tuple[Event, Event]:
    """14,600 applied by all; 15,000 applied by all but mobile-tax-app, now 4 minutes past its deadline."""
    old = publish_on_bus(14600)
    for name in ("e-file", "withholding-calculator", "mobile-tax-app", "analytics-dashboard"):
        receipt_send(old, name)
    new = publish_on_bus(15000)
    for name in ("e-file", "withholding-calculator"):
        receipt_send(new, name)
    receipt_send(new, "analytics-dashboard", "rejected", "our charts stop at 14,999")
    time_machine.move_to(new.published_at + dt.timedelta(seconds=60 + 4 * 60 + 5))
    drift_advance()
    return old, new


def test_the_topic_page_shows_the_value_in_force_who_applied_it_and_who_drifts(drifting: tuple[Event, Event]) -> None:
    _, new = drifting

    page = _text(signed_in("auditor").get("/topics/tax-policy/"))

    at = f"{new.published_at:%H:%M:%S}"
    assert f"In force since {new.published_at:%Y-%m-%d %H:%M:%S} UTC: {new.envelope_id}" in page
    assert '{"standard_deduction": 15000}' in page
    assert f"mobile-tax-app still on standard_deduction 14600; 15000 in force since {at} UTC, 4 min overdue" in (page)
    assert "analytics-dashboard still on standard_deduction 14600; 15000 in force since" in page
    assert "rejected: “our charts stop at 14,999”" in page
    assert "e-file applied" in page
    assert "mobile-tax-app overdue" in page


def test_the_in_force_part_alone_is_what_the_page_swaps_in_live(drifting: tuple[Event, Event]) -> None:
    response = signed_in("policy").get("/topics/tax-policy/in-force/")

    assert response.content.decode().lstrip().startswith('<div id="in-force"')
    assert "mobile-tax-app still on" in _text(response)


def test_the_event_record_lists_every_expected_service_with_its_state_and_latency(
    drifting: tuple[Event, Event],
) -> None:
    _, new = drifting

    page = _text(signed_in("auditor").get(f"/events/{new.envelope_id}/"))

    assert "Services expected to apply it" in page
    assert "e-file unknown (no consumer group) applied" in page  # no hms_subscriber group in this test
    assert "mobile-tax-app unknown (no consumer group) overdue 4 min past its 1 min deadline" in page
    assert "analytics-dashboard unknown (no consumer group) rejected" in page
    assert "our charts stop at 14,999" in page


def test_an_event_in_time_says_when_each_receipt_is_due_and_the_part_says_when_to_look_again(
    publish_on_bus: Any,
) -> None:
    event = publish_on_bus(15000)

    response = signed_in("auditor").get(f"/events/{event.envelope_id}/services/")

    assert f"due by {event.published_at + dt.timedelta(seconds=60):%H:%M:%S} UTC" in _text(response)
    assert 'data-next-due="' in response.content.decode()
    assert 'data-next-due=""' not in response.content.decode()


def test_the_dashboard_lists_the_drifting_services_longest_first(drifting: tuple[Event, Event]) -> None:
    page = _text(signed_in("admin").get("/"))

    section = page.split("Services on the values in force", 1)[1]
    assert section.index("analytics-dashboard tax-policy tax_policy.updated rejected") < section.index(
        "mobile-tax-app tax-policy tax_policy.updated overdue"
    )


def test_the_dashboard_counts_the_days_rejections_in_red(drifting: tuple[Event, Event]) -> None:
    response = signed_in("policy").get("/")

    assert '<div class="tile bad" id="rejected-today"><span class="figure">1</span>' in response.content.decode()
    assert "1 rejections by services in the last 24 h (their receipts)" in _text(response)


def test_the_dashboard_says_when_no_service_is_behind(publish_on_bus: Any) -> None:
    event = publish_on_bus(15000)
    for name in ("e-file", "withholding-calculator", "mobile-tax-app", "analytics-dashboard"):
        receipt_send(event, name)
    drift_advance()

    assert "No registered service is behind" in _text(signed_in("policy").get("/"))
