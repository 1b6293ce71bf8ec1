"""Prometheus metrics of the bus, read when scraped: from the database and Redis, so every process agrees.

Counting events would scan the history on every scrape, so totals come from the newest
row's id (ids only grow) and the small counts (pending, open dead letters) from their
partial indexes. The tap's lag is what Redis says its consumer group has yet to read.
Websocket clients are counted by the web process that holds them; bulk replays by what they
have left to do; events nobody approved (an external publisher's, on a sensitive topic) from their own
partial index. Pub/Sub listeners are counted by Redis (``PUBSUB NUMSUB``) at scrape time;
their history is the scraper's (the dashboard's own is in ``busapp.delivery``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import redis
from django.db.models import Count
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from busapp.delivery import deliveries
from busapp.health import workers_read
from busapp.models import (
    BulkAction,
    BulkActionStatus,
    DeadLetter,
    DeadLetterStatus,
    Drift,
    Event,
    EventStatus,
    ReceiptStatus,
    SubscriberFollow,
    Topic,
)
from busapp.publishing import (
    RECEIPTS_RECORDED_KEY,
    RECEIPTS_REFUSED_KEY,
    TAP_GROUP,
    bus_redis,
    receipts_counts,
    stream_key,
    subscribers_counts,
)

registry = CollectorRegistry()  # not auto_describe: that would query the database at import
websocket_clients = Gauge(
    "hms_bus_websocket_clients", "Websocket clients connected to this web process", ["feed"], registry=registry
)


def _newest_id(model: type[Event] | type[DeadLetter]) -> int:
    """The highest id so far: how many rows were ever written, without counting them."""
    return model.objects.order_by("-id").values_list("id", flat=True).first() or 0


class BusCollector(Collector):
    """Reads the figures at scrape time."""

    def collect(self) -> Iterator[Metric]:
        """Events, dead letters, what waits, and the tap's lag per topic."""
        yield GaugeMetricFamily(
            "hms_bus_events_total",
            "Events ever accepted: the newest history id (a rolled-back write's id counts too)",
            value=_newest_id(Event),
        )
        yield GaugeMetricFamily(
            "hms_bus_events_pending",
            "Accepted events still waiting for Redis",
            value=Event.objects.filter(status=EventStatus.PENDING).count(),
        )
        yield GaugeMetricFamily(
            "hms_bus_dead_letters_total", "Dead letters ever kept (ids)", value=_newest_id(DeadLetter)
        )
        yield GaugeMetricFamily(
            "hms_bus_dead_letters_open",
            "Dead letters neither replayed nor discarded",
            value=DeadLetter.objects.filter(status=DeadLetterStatus.OPEN).count(),
        )
        yield _events_not_approved()
        yield _events_maybe_sent_twice()
        running = list(BulkAction.objects.filter(status=BulkActionStatus.RUNNING).values_list("letter_ids", "handled"))
        yield GaugeMetricFamily("hms_bus_bulk_actions_running", "Bulk replays and discards running", value=len(running))
        yield GaugeMetricFamily(
            "hms_bus_bulk_letters_remaining",
            "Dead letters the running bulk actions have yet to handle",
            value=sum(len(ids) - handled for ids, handled in running),
        )
        lag = GaugeMetricFamily(
            "hms_bus_tap_lag_entries", "Stream entries the bus worker has not yet recorded", labels=["topic"]
        )
        listeners = GaugeMetricFamily(
            "hms_pubsub_listeners",
            "Clients listening on the topic's Pub/Sub channel now (PUBSUB NUMSUB; the bus workers' own included)",
            labels=["topic"],
        )
        up = GaugeMetricFamily("hms_bus_redis_up", "1 when Redis answered this scrape")
        try:
            topics = list(Topic.objects.order_by("name").values_list("name", flat=True))
            for topic in topics:
                lag.add_metric([topic], _tap_lag(topic))
            for topic, count in subscribers_counts(topics).items():
                listeners.add_metric([topic], count)
            up.add_metric([], 1)
        except redis.RedisError:
            up.add_metric([], 0)
        yield lag
        yield listeners
        yield up
        yield from _subscriber_families()
        yield from _worker_families()


def _subscriber_families() -> Iterator[Metric]:
    """Each registered subscriber's consumer group on each topic it follows: lag in entries and seconds."""
    entries = GaugeMetricFamily(
        "hms_subscriber_lag_entries",
        "Stream entries not yet delivered to the subscriber's consumer group (absent: no group, or unknown)",
        labels=["subscriber", "topic"],
    )
    seconds = GaugeMetricFamily(
        "hms_subscriber_lag_seconds",
        "Age of the oldest stream entry not yet delivered to the subscriber's consumer group",
        labels=["subscriber", "topic"],
    )
    for delivery in deliveries():
        for name, state in delivery.followers.items():
            if state.lag_entries is not None:
                entries.add_metric([name, delivery.topic.name], state.lag_entries)
            if state.lag_seconds is not None:
                seconds.add_metric([name, delivery.topic.name], state.lag_seconds)
    yield entries
    yield seconds
    yield from _receipt_families()


def _receipt_families() -> Iterator[Metric]:
    """Receipts recorded by status and refused by reason, and which subscribers are behind on a value in force."""
    recorded = CounterMetricFamily(
        "hms_event_receipts", "Subscribers' receipts recorded, by status (API and stream)", labels=["status"]
    )
    counts = receipts_counts(RECEIPTS_RECORDED_KEY)
    for status in ReceiptStatus.values:
        recorded.add_metric([status], counts.get(status, 0))
    yield recorded
    refused = CounterMetricFamily(
        "hms_event_receipts_refused",
        "Receipts the workers refused off the receipts stream, by reason",
        labels=["reason"],
    )
    for reason, count in sorted(receipts_counts(RECEIPTS_REFUSED_KEY).items()):
        refused.add_metric([reason], count)
    yield refused
    overdue = GaugeMetricFamily(
        "hms_subscriber_overdue",
        "Event types whose value in force the subscriber has not applied past its deadline, or rejected",
        labels=["subscriber", "topic"],
    )
    behind = Counter(Drift.objects.filter(cleared_at__isnull=True).values_list("subscriber__name", "topic__name"))
    for follow in SubscriberFollow.objects.values_list("subscriber__name", "topic__name"):
        overdue.add_metric(list(follow), behind.get(follow, 0))
    yield overdue


def _worker_families() -> Iterator[Metric]:
    """The bus workers' heartbeats: how many live, each one's last beat, each loop's errors since it started."""
    beats = workers_read() or []
    yield GaugeMetricFamily(
        "hms_bus_workers_alive",
        "Bus workers that beat in the last 15 s",
        value=sum(beat.alive() for beat in beats),
    )
    age = GaugeMetricFamily(
        "hms_bus_worker_heartbeat_age_seconds", "Seconds since each bus worker's last heartbeat", labels=["worker"]
    )
    errors = CounterMetricFamily(
        "hms_bus_worker_loop_errors",
        "Failures of each loop of each bus worker since it started (logged with their tracebacks)",
        labels=["worker", "loop"],
    )
    for beat in beats:
        age.add_metric([beat.name], beat.age())
        for loop, state in beat.loops.items():
            errors.add_metric([beat.name, loop], state.errors)
    yield age
    yield errors


def _events_flagged(flag: str, name: str, documentation: str) -> CounterMetricFamily:
    """Per topic, the events with a flag set, counted from the flag's partial index, not the history."""
    counts = dict(Event.objects.filter(**{flag: True}).order_by().values_list("topic_id").annotate(n=Count("id")))
    family = CounterMetricFamily(name, documentation, labels=["topic"])
    for topic_id, topic in Topic.objects.order_by("name").values_list("id", "name"):
        family.add_metric([topic], counts.get(topic_id, 0))
    return family


def _events_not_approved() -> CounterMetricFamily:
    """Per topic, events an external publisher published while the topic was sensitive (nobody approved them)."""
    return _events_flagged(
        "not_approved",
        "hms_bus_events_not_approved",
        "Events from external publishers on a topic that was sensitive, so approved by nobody",
    )


def _events_maybe_sent_twice() -> CounterMetricFamily:
    """Per topic, events resent after Redis lost what became of their first send: maybe heard twice."""
    return _events_flagged(
        "maybe_sent_twice",
        "hms_bus_events_maybe_sent_twice",
        "Events resent after Redis lost the outcome of their first send with its data (it may have run)",
    )


def _tap_lag(topic: str) -> float:
    """Entries of the topic's stream not yet delivered to the tap's group, plus those read but not acknowledged."""
    for group in bus_redis().xinfo_groups(stream_key(topic)) if bus_redis().exists(stream_key(topic)) else []:
        name = group.get("name", b"")
        if (name.decode() if isinstance(name, bytes) else name) == TAP_GROUP:
            behind = group.get("lag")  # Redis 7; None when Redis cannot tell, and absent on Redis 6
            return float((behind or 0) + group.get("pending", 0))
    return 0.0


registry.register(BusCollector())
