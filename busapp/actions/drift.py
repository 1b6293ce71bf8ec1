"""Drift: a subscriber not on an event type's value in force, opened and cleared by the bus worker, each audited.

The value in force is the type's newest published event. A subscriber that follows the type
must apply it within its follow's deadline (counted from the publish, or from when it began
to follow, whichever is later). Past the deadline with no receipt, or on a rejection, it
drifts: a ``Drift`` row and a ``subscriber.overdue`` entry. Once it applies (or ignores) the
value then in force, the row is cleared with a ``subscriber.caught_up`` entry.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from busapp.applied import Expected, expectations, last_applied
from busapp.audit import AuditRecord, audit_append
from busapp.models import (
    AuditAction,
    Drift,
    DriftReason,
    Receipt,
    SubscriberFollow,
)

DRIFT_ACTOR = "system:drift-check"


@dataclass
class DriftChanges:
    """What one check changed: drifts opened and cleared (for the live pages)."""

    opened: list[Drift]
    cleared: list[tuple[Drift, Expected]]

    def __len__(self) -> int:
        return len(self.opened) + len(self.cleared)


@transaction.atomic
def drift_advance(*, now: dt.datetime | None = None) -> DriftChanges:
    """Open a drift for each subscriber newly behind on a value in force, clear those back on it; audit each."""
    now = now or timezone.now()
    follows = SubscriberFollow.objects.select_related("subscriber", "topic").prefetch_related("event_types")
    expected = {(e.follow.subscriber_id, e.event_type.pk): e for e in expectations(follows)}
    open_drifts = {
        (drift.subscriber_id, drift.event_type_id): drift
        for drift in Drift.objects.select_for_update(of=("self",))
        .filter(cleared_at__isnull=True)
        .select_related("subscriber", "topic", "event_type", "event")
    }
    changes = DriftChanges([], [])
    opened: list[AuditRecord] = []
    cleared: list[AuditRecord] = []
    for key, owed in expected.items():
        behind = owed.drifting(now)
        if behind is not None and key not in open_drifts:
            reason, since = behind
            drift = Drift(
                subscriber=owed.follow.subscriber,
                topic=owed.follow.topic,
                event_type=owed.event_type,
                event=owed.event,
                reason=DriftReason(reason),
                since=since,
            )
            changes.opened.append(drift)
            opened.append(_overdue_record(drift, owed))
        elif behind is None and key in open_drifts and owed.receipt is not None:
            drift = open_drifts[key]
            drift.cleared_at = now
            changes.cleared.append((drift, owed))
            cleared.append(_caught_up_record(drift, owed, now, owed.receipt))
    for key, drift in open_drifts.items():
        if key not in expected:  # it no longer follows the type: nothing is owed, so nothing drifts
            drift.cleared_at = now
            cleared.append(_unfollowed_record(drift))
    if changes.opened:
        audit_append(actor=DRIFT_ACTOR, records=opened, rows=changes.opened)
    if cleared:
        Drift.objects.bulk_update([d for d in open_drifts.values() if d.cleared_at is not None], ["cleared_at"])
        audit_append(actor=DRIFT_ACTOR, records=cleared)
    return changes


def _overdue_record(drift: Drift, owed: Expected) -> AuditRecord:
    """The entry that says a subscriber is behind on a value in force, and on which value it still is."""
    details: dict[str, Any] = {
        "topic": drift.topic.name,
        "type": drift.event_type.name,
        "reason": drift.reason,
        "in_force": drift.event.envelope_id,
        "since": drift.since.isoformat(),
        "apply_deadline": owed.follow.apply_deadline,
    }
    still_on = last_applied(owed.follow.subscriber, owed.event_type)
    if still_on is not None:
        details["still_on"] = still_on.envelope_id
    if owed.receipt is not None and owed.receipt.detail:
        details["detail"] = owed.receipt.detail
    return AuditRecord(AuditAction.SUBSCRIBER_OVERDUE, f"subscriber:{drift.subscriber.name}", details)


def _caught_up_record(drift: Drift, owed: Expected, now: dt.datetime, receipt: Receipt) -> AuditRecord:
    """The entry that says a subscriber is back on the value in force, and how long it was not."""
    return AuditRecord(
        AuditAction.SUBSCRIBER_CAUGHT_UP,
        f"subscriber:{drift.subscriber.name}",
        {
            "topic": drift.topic.name,
            "type": drift.event_type.name,
            "in_force": owed.event.envelope_id,
            "status": receipt.status,
            "behind_seconds": round((now - drift.since).total_seconds(), 3),
        },
    )


def _unfollowed_record(drift: Drift) -> AuditRecord:
    """The entry that says a drift ended because the subscriber no longer follows the type."""
    return AuditRecord(
        AuditAction.SUBSCRIBER_CAUGHT_UP,
        f"subscriber:{drift.subscriber.name}",
        {"topic": drift.topic.name, "type": drift.event_type.name, "why": "no longer follows it"},
    )
