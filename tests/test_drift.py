"""Drift: who is not on the value in force past its deadline (or rejected it), opened and cleared with audit entries."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.utils import timezone

from busapp.actions.drift import drift_advance
from busapp.actions.subscribers import subscriber_create, subscriber_follow, subscriber_unfollow
from busapp.models import AuditAction, AuditEntry, Drift, Subscriber, Topic
from tests.support import receipt_send, signed_in

pytestmark = pytest.mark.usefixtures("demo")


def _open() -> set[tuple[str, str]]:
    return set(Drift.objects.filter(cleared_at__isnull=True).values_list("subscriber__name", "reason"))


def test_nobody_drifts_within_the_deadline_and_the_silent_ones_do_after_it(
    time_machine: Any, publish_on_bus: Any
) -> None:
    event = publish_on_bus(15000)
    for name in ("e-file", "withholding-calculator"):
        receipt_send(event, name)

    time_machine.move_to(event.published_at + dt.timedelta(seconds=59))
    assert not drift_advance()
    time_machine.move_to(event.published_at + dt.timedelta(seconds=61))
    changes = drift_advance()

    assert {drift.subscriber.name for drift in changes.opened} == {"mobile-tax-app"}  # analytics has 300 s
    assert _open() == {("mobile-tax-app", "overdue")}
    entry = AuditEntry.objects.get(action=AuditAction.SUBSCRIBER_OVERDUE)
    assert entry.target == "subscriber:mobile-tax-app"
    assert entry.details["in_force"] == event.envelope_id
    assert entry.details["since"] == (event.published_at + dt.timedelta(seconds=60)).isoformat()
    assert not drift_advance()  # open already: no second entry
    assert AuditEntry.objects.filter(action=AuditAction.SUBSCRIBER_OVERDUE).count() == 1


def test_the_overdue_entry_says_which_value_the_subscriber_is_still_on(time_machine: Any, publish_on_bus: Any) -> None:
    old = publish_on_bus(14600)
    receipt_send(old, "mobile-tax-app")
    new = publish_on_bus(15000)

    time_machine.move_to(new.published_at + dt.timedelta(seconds=61))
    drift_advance()

    entry = AuditEntry.objects.get(action=AuditAction.SUBSCRIBER_OVERDUE, target="subscriber:mobile-tax-app")
    assert entry.details["still_on"] == old.envelope_id
    assert entry.details["in_force"] == new.envelope_id


def test_a_rejection_drifts_at_once_with_its_detail(time_machine: Any, publish_on_bus: Any) -> None:
    event = publish_on_bus(15000)

    receipt_send(event, "e-file", "rejected", "15000 is over our table's cap")
    drift_advance()

    assert _open() == {("e-file", "rejected")}
    entry = AuditEntry.objects.get(action=AuditAction.SUBSCRIBER_OVERDUE)
    assert entry.details["detail"] == "15000 is over our table's cap"


def test_a_drift_clears_when_the_subscriber_applies_the_value_then_in_force(
    time_machine: Any, publish_on_bus: Any
) -> None:
    event = publish_on_bus(15000)
    time_machine.move_to(event.published_at + dt.timedelta(seconds=61))
    drift_advance()
    assert ("mobile-tax-app", "overdue") in _open()

    receipt_send(event, "mobile-tax-app")
    changes = drift_advance()

    assert [drift.subscriber.name for drift, _ in changes.cleared] == ["mobile-tax-app"]
    assert ("mobile-tax-app", "overdue") not in _open()
    entry = AuditEntry.objects.get(action=AuditAction.SUBSCRIBER_CAUGHT_UP)
    assert entry.details["in_force"] == event.envelope_id
    assert entry.details["behind_seconds"] >= 1


def test_a_new_value_in_force_keeps_a_drift_open_until_it_is_applied(time_machine: Any, publish_on_bus: Any) -> None:
    old = publish_on_bus(14600)
    time_machine.move_to(old.published_at + dt.timedelta(seconds=61))
    drift_advance()

    newer = publish_on_bus(15000)  # within its deadline now, but mobile-tax-app never applied the old one
    assert ("mobile-tax-app", "overdue") in _open()
    receipt_send(newer, "mobile-tax-app")
    drift_advance()

    assert ("mobile-tax-app", "overdue") not in _open()


def test_a_subscriber_that_begins_to_follow_late_has_its_deadline_from_then(
    time_machine: Any, publish_on_bus: Any
) -> None:
    event = publish_on_bus(15000)
    for name in ("e-file", "withholding-calculator", "mobile-tax-app", "analytics-dashboard"):
        receipt_send(event, name)
    time_machine.move_to(event.published_at + dt.timedelta(hours=1))
    refunds = subscriber_create(name="refund-service", actor="test")
    subscriber_follow(subscriber=refunds, topic=Topic.objects.get(name="tax-policy"), actor="test")

    assert not drift_advance()  # an hour old, but it began to follow just now
    time_machine.move_to(timezone.now() + dt.timedelta(seconds=61))
    assert [drift.subscriber.name for drift in drift_advance().opened] == ["refund-service"]


def test_a_subscriber_that_stops_following_stops_drifting(time_machine: Any, publish_on_bus: Any) -> None:
    event = publish_on_bus(15000)
    time_machine.move_to(event.published_at + dt.timedelta(seconds=61))
    drift_advance()

    subscriber_unfollow(
        subscriber=Subscriber.objects.get(name="mobile-tax-app"), topic=Topic.objects.get(name="tax-policy"), actor="t"
    )
    drift_advance()

    assert ("mobile-tax-app", "overdue") not in _open()
    entry = AuditEntry.objects.filter(action=AuditAction.SUBSCRIBER_CAUGHT_UP).get()
    assert entry.details["why"] == "no longer follows it"


def test_metrics_count_receipts_by_status_and_the_event_types_each_subscriber_is_behind_on(
    time_machine: Any, publish_on_bus: Any, django_capture_on_commit_callbacks: Any
) -> None:
    event = publish_on_bus(15000)
    said = [("e-file", "applied"), ("withholding-calculator", "rejected"), ("analytics-dashboard", "ignored")]
    with django_capture_on_commit_callbacks(execute=True):
        for name, status in said:
            receipt_send(event, name, status, "over our cap" if status == "rejected" else "")
    time_machine.move_to(event.published_at + dt.timedelta(seconds=61))
    drift_advance()

    text = signed_in("admin").get("/metrics").content.decode()

    assert 'hms_subscriber_overdue{subscriber="mobile-tax-app",topic="tax-policy"} 1.0' in text
    assert 'hms_subscriber_overdue{subscriber="withholding-calculator",topic="tax-policy"} 1.0' in text
    assert 'hms_subscriber_overdue{subscriber="e-file",topic="tax-policy"} 0.0' in text
    assert 'hms_subscriber_overdue{subscriber="analytics-dashboard",topic="tax-policy"} 0.0' in text
    for status in ("applied", "rejected", "ignored"):
        assert f'hms_event_receipts_total{{status="{status}"}} 1.0' in text
