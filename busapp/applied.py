"""Who applied what: the values in force and each subscriber's word on them, an event's expected services, drift.

Reads only (the bus worker's ``actions.drift`` writes drift). An event is expected of every
subscriber that follows its topic and type. Each one's state on it: ``applied``, ``ignored``,
``rejected`` (from its receipt), ``overdue`` (no receipt past its deadline) or ``waiting``
(no receipt, still in time); and whether its consumer group was handed the event yet.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import redis
from django.utils import timezone

from busapp.models import (
    Drift,
    Event,
    EventStatus,
    EventType,
    Receipt,
    ReceiptStatus,
    Subscriber,
    SubscriberFollow,
    Topic,
)
from busapp.payload_diff import payload_diff
from busapp.publishing import stream_groups, stream_id_key
from busapp.selectors import event_in_force

OVERDUE, WAITING = "overdue", "waiting"


@dataclass(frozen=True)
class Expected:
    """What one subscriber owes one event: its deadline, and its receipt if it sent one."""

    follow: SubscriberFollow
    event_type: EventType
    event: Event
    due_at: dt.datetime
    receipt: Receipt | None

    def drifting(self, now: dt.datetime) -> tuple[str, dt.datetime] | None:
        """Why (``rejected`` or ``overdue``) and since when it is behind at ``now``; None when settled or in time."""
        if self.receipt is not None:
            if self.receipt.status == ReceiptStatus.REJECTED:
                return ReceiptStatus.REJECTED.value, self.receipt.received_at
            return None
        if now >= self.due_at:
            return OVERDUE, self.due_at
        return None

    def state(self, now: dt.datetime) -> str:
        """``applied``, ``ignored``, ``rejected``, ``overdue`` or ``waiting``."""
        if self.receipt is not None:
            return self.receipt.status
        return OVERDUE if now >= self.due_at else WAITING

    @property
    def latency(self) -> float | None:
        """Seconds from the publish to the receipt."""
        return self.receipt.seconds_after(self.event.published_at) if self.receipt else None


def _due_at(event: Event, follow: SubscriberFollow) -> dt.datetime:
    """When the subscriber's receipt is due: its deadline after the publish, or after it began to follow."""
    start = max(event.published_at or event.created_at, follow.since)
    return start + dt.timedelta(seconds=follow.apply_deadline)


def _receipts(pairs: Iterable[tuple[SubscriberFollow, Event]]) -> dict[tuple[int, int], Receipt]:
    """The receipts of these (follow, event) pairs, by (event id, subscriber id), in one query."""
    pairs = list(pairs)
    if not pairs:
        return {}
    rows = Receipt.objects.filter(
        event__in={event.pk for _, event in pairs}, subscriber__in={follow.subscriber_id for follow, _ in pairs}
    )
    return {(receipt.event_id, receipt.subscriber_id): receipt for receipt in rows}


def expectations(follows: Iterable[SubscriberFollow]) -> list[Expected]:
    """For each follow and each type it follows that has a value in force: what the subscriber owes on it."""
    follows = list(follows)
    types_of_topic: dict[int, list[EventType]] = defaultdict(list)
    for kind in EventType.objects.filter(topic__in={follow.topic_id for follow in follows}).order_by("name"):
        types_of_topic[kind.topic_id].append(kind)
    in_force: dict[int, Event | None] = {}
    owed: list[tuple[SubscriberFollow, EventType, Event]] = []
    for follow in follows:
        for kind in list(follow.event_types.all()) or types_of_topic[follow.topic_id]:
            if kind.pk not in in_force:
                in_force[kind.pk] = event_in_force(event_type=kind)
            event = in_force[kind.pk]
            if event is not None:
                owed.append((follow, kind, event))
    receipts = _receipts((follow, event) for follow, _, event in owed)
    return [
        Expected(follow, kind, event, _due_at(event, follow), receipts.get((event.pk, follow.subscriber_id)))
        for follow, kind, event in owed
    ]


def _follows_of(topic: Topic) -> list[SubscriberFollow]:
    """The topic's follows with their subscribers and chosen types."""
    return list(
        SubscriberFollow.objects.filter(topic=topic)
        .select_related("subscriber", "topic")
        .prefetch_related("event_types")
    )


def _follows_type(follow: SubscriberFollow, event_type_id: int) -> bool:
    """Whether the follow covers the type (no chosen types: every type)."""
    chosen = [kind.pk for kind in follow.event_types.all()]
    return not chosen or event_type_id in chosen


@dataclass(frozen=True)
class ServiceOnEvent:
    """One expected subscriber on one event: its state, receipt, deadline, and whether Redis handed it the event."""

    expected: Expected
    state: str
    delivered: bool | None  # None: no consumer group, or Redis did not answer
    overdue_seconds: float | None  # how long past its deadline, when overdue

    @property
    def name(self) -> str:
        """The subscriber's name."""
        return self.expected.follow.subscriber.name


def event_services(event: Event, *, now: dt.datetime | None = None) -> list[ServiceOnEvent]:
    """Every subscriber the event is expected of, by name: what it did, or that it is overdue or still in time."""
    now = now or timezone.now()
    follows = [follow for follow in _follows_of(event.topic) if _follows_type(follow, event.event_type_id)]
    receipts = _receipts((follow, event) for follow in follows)
    positions = _group_positions(event.topic)
    rows = []
    for follow in follows:
        expected = Expected(
            follow, event.event_type, event, _due_at(event, follow), receipts.get((event.pk, follow.subscriber_id))
        )
        rows.append(
            ServiceOnEvent(
                expected,
                expected.state(now),
                _delivered(event, positions.get(follow.subscriber.name)),
                (now - expected.due_at).total_seconds() if expected.state(now) == OVERDUE else None,
            )
        )
    return rows


def _group_positions(topic: Topic) -> dict[str, str]:
    """Each consumer group's last delivered stream id on the topic's stream (empty when Redis does not answer)."""
    try:
        readings = stream_groups(topic.channel) or []
    except (redis.RedisError, OSError):
        return {}
    return {reading.name: reading.last_delivered_id for reading in readings}


def _delivered(event: Event, position: str | None) -> bool | None:
    """Whether the group's position is at or past the event's stream entry (None: unknown)."""
    if position is None or not event.stream_id:
        return None
    return stream_id_key(position) >= stream_id_key(event.stream_id)


def next_due_in(rows: Iterable[ServiceOnEvent], now: dt.datetime) -> float | None:
    """Seconds until the next deadline of a subscriber still in time (a page refreshes itself then)."""
    waits = [(row.expected.due_at - now).total_seconds() for row in rows if row.state == WAITING]
    return max(0.0, min(waits)) if waits else None


@dataclass(frozen=True)
class Behind:
    """A service not on the value in force: the value it is still on, and the fields where the two differ."""

    service: ServiceOnEvent
    still_on: Event | None
    changes: list[tuple[str, str | None, str | None]]  # (field path, its value there, its value in force)


@dataclass(frozen=True)
class ValueInForce:
    """An event type's value in force on a topic, and every following subscriber on it."""

    event_type: EventType
    event: Event | None
    services: list[ServiceOnEvent]
    behind: list[Behind]


def topic_values_in_force(topic: Topic, *, now: dt.datetime | None = None) -> list[ValueInForce]:
    """Each of the topic's event types: the value in force, who applied it, who is behind and on which value."""
    now = now or timezone.now()
    values = []
    for kind in EventType.objects.filter(topic=topic).order_by("name"):
        event = event_in_force(event_type=kind)
        services = event_services(event, now=now) if event is not None else []
        behind = [
            _behind(service, event)
            for service in services
            if event is not None and service.state in (OVERDUE, ReceiptStatus.REJECTED)
        ]
        values.append(ValueInForce(kind, event, services, behind))
    return values


def _behind(service: ServiceOnEvent, in_force: Event) -> Behind:
    """The newest value of the type the service applied, and the fields where it differs from the one in force."""
    applied = last_applied(service.expected.follow.subscriber, in_force.event_type)
    if applied is None:
        return Behind(service, None, [])
    rows = payload_diff(applied.payload, in_force.payload)
    return Behind(service, applied, [(row.path, row.before, row.after) for row in rows if row.before != row.after])


# How many of a type's newest values are searched for the one a service is still on (two indexed reads).
STILL_ON_LOOKBACK = 1000


def last_applied(subscriber: Subscriber, event_type: EventType) -> Event | None:
    """The newest of the type's last ``STILL_ON_LOOKBACK`` values the subscriber applied: the value it is on.

    Walks the type's own index newest first, then looks up the subscriber's receipts of those
    events by the unique (event, subscriber) index: bounded however many receipts history holds.
    """
    newest = list(
        Event.objects.filter(event_type=event_type, status=EventStatus.PUBLISHED)
        .order_by("-timestamp", "-id")
        .values_list("pk", flat=True)[:STILL_ON_LOOKBACK]
    )
    applied = set(
        Receipt.objects.filter(event__in=newest, subscriber=subscriber, status=ReceiptStatus.APPLIED).values_list(
            "event_id", flat=True
        )
    )
    found = next((pk for pk in newest if pk in applied), None)
    return Event.objects.get(pk=found) if found is not None else None


def receipts_rejected_count(topics: Iterable[Topic], *, since: dt.datetime) -> int:
    """Receipts that rejected an event of these topics since then (read through the rejections' own index)."""
    rejected = Receipt.objects.filter(status=ReceiptStatus.REJECTED, received_at__gte=since)
    return rejected.filter(event__topic__in=list(topics)).count()


def drifts_open(topics: Iterable[Topic] | None = None) -> list[Drift]:
    """Subscribers behind on a value in force now, longest first (on these topics, or all)."""
    drifts = Drift.objects.filter(cleared_at__isnull=True).select_related("subscriber", "topic", "event_type", "event")
    if topics is not None:
        drifts = drifts.filter(topic__in=list(topics))
    return list(drifts.order_by("since"))
