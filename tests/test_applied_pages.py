"""The pages that say who applied what: a topic's values in force and drift, an event's services, the dashboard."""

from __future__ import annotations

import datetime as dt
import html
import re
from typing import Any

import pytest
from django.utils import timezone

from busapp.actions.drift import drift_advance
from busapp.actions.receipts import ReceiptIn, receipt_record
from busapp.models import Event, ReceiptVia
from tests.support import publish_deduction, signed_in

pytestmark = pytest.mark.usefixtures("demo")


def _text(response: Any) -> str:
    """The page's words, each cell apart."""
    assert response.status_code == 200
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", response.content.decode())).split())


def _receipt(event: Event, subscriber: str, status: str = "applied", detail: str = "") -> None:
    receipt = ReceiptIn(subscriber, event.envelope_id, status, detail, timezone.now(), ReceiptVia.API)
    receipt_record(receipt, actor=f"service:{subscriber}")


@pytest.fixture
def publish(bus: Any, django_capture_on_commit_callbacks: Any) -> Any:
    """Publish the seed's event and have it on the bus (its commit hook sends it)."""

    def published(deduction: int) -> Event:
        with django_capture_on_commit_callbacks(execute=True):
            event = publish_deduction(deduction)
        event.refresh_from_db()
        return event

    return published


@pytest.fixture
def drifting(time_machine: Any, publish: Any) -> tuple[Event, Event]:
    """14,600 applied by all; 15,000 applied by all but mobile-tax-app, now 4 minutes past its deadline."""
    old = publish(14600)
    for name in ("e-file", "withholding-calculator", "mobile-tax-app", "analytics-dashboard"):
        _receipt(old, name)
    new = publish(15000)
    for name in ("e-file", "withholding-calculator"):
        _receipt(new, name)
    _receipt(new, "analytics-dashboard", "rejected", "our charts stop at 14,999")
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


def test_an_event_in_time_says_when_each_receipt_is_due_and_the_part_says_when_to_look_again(publish: Any) -> None:
    event = publish(15000)

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


def test_the_dashboard_says_when_no_service_is_behind(publish: Any) -> None:
    event = publish(15000)
    for name in ("e-file", "withholding-calculator", "mobile-tax-app", "analytics-dashboard"):
        _receipt(event, name)
    drift_advance()

    assert "No registered service is behind" in _text(signed_in("policy").get("/"))
