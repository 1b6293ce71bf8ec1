"""Delivery as Redis sees it: each subscriber's consumer group on a topic's stream, its lag, pending and consumers.

A subscriber reads ``stream:<topic>`` through a consumer group named after it. The group's
lag (entries not yet delivered) and the age of its oldest undelivered entry say how far behind
it is; pending entries were delivered but not acknowledged. Groups no subscriber is registered
for are shown as unregistered, so nothing listening is hidden; a missing stream is said so.

Seed-style subscribers listen on the Pub/Sub channel and are anonymous: all Redis can say is
how many clients listen (``PUBSUB NUMSUB``). A bus worker samples that every
``LISTENERS_SAMPLE_EVERY_SECONDS`` and keeps, per topic, one Redis list of minutes (lowest,
highest and last count of each) for a day, so a page shows the count now, its range over the
last hour and day, and a sparkline. These are observations, not changes of state: they are
not audited, and a Redis restarted empty loses them with the streams they describe.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import redis
from django.db.models import QuerySet

from busapp.models import Event, SubscriberFollow, Topic
from busapp.publishing import TAP_GROUP, GroupReading, bus_redis, stream_groups, subscribers_count, subscribers_counts

# A seed-style subscriber that restarts is away for seconds: every 10 s catches most absences
# while costing Redis one NUMSUB for all channels and two pipelined round trips.
LISTENERS_SAMPLE_EVERY_SECONDS = 10.0
# The lease only spans one sample (milliseconds); it outlives a stalled Redis's 5 s socket timeout.
LISTENERS_SAMPLE_LEASE_SECONDS = 30
# A day of minutes per topic: at most 1,440 short list items (tens of KB), whatever the sampling rate.
LISTENERS_KEEP_MINUTES = 24 * 60
LISTENERS_KEY_PREFIX = "hms:listeners:"
# When the last sample was taken, by any worker: the others skip theirs, so N workers sample once per interval.
LISTENERS_SAMPLED_AT_KEY = "hms:listeners-sampled-at"
HOUR_SECONDS = 3600
DAY_SECONDS = 24 * HOUR_SECONDS


@dataclass(frozen=True)
class GroupState:
    """One consumer group's delivery: lag in entries and seconds, pending, consumers, or that it is missing."""

    name: str
    reading: GroupReading | None  # None: the subscriber has no consumer group on the stream (yet)
    now_ms: int
    # The last delivered entry's event is in history (its page can be linked).
    last_event_recorded: bool = False

    @property
    def lag_entries(self) -> int | None:
        """Entries the group has not been given yet (None: unknown, or no group)."""
        return self.reading.lag if self.reading else None

    @property
    def lag_seconds(self) -> float | None:
        """Age of the oldest entry not delivered to the group (0 when it is up to date; None when unknown)."""
        if self.reading is None:
            return None
        if self.reading.oldest_undelivered_id is None:
            return 0.0
        written_ms = int(self.reading.oldest_undelivered_id.split("-")[0])
        return max(0.0, (self.now_ms - written_ms) / 1000)


@dataclass(frozen=True)
class ListenerMinute:
    """One minute of Pub/Sub listener samples on a channel: the lowest, highest and last count seen."""

    minute: int  # epoch seconds at the minute's start
    low: int
    high: int
    last: int

    def encoded(self) -> str:
        """As kept in Redis: ``minute:low:high:last``."""
        return f"{self.minute}:{self.low}:{self.high}:{self.last}"

    def with_sample(self, count: int) -> ListenerMinute:
        """The minute with one more sample counted in."""
        return ListenerMinute(self.minute, min(self.low, count), max(self.high, count), count)


def _minute_decoded(raw: bytes | str | None) -> ListenerMinute | None:
    """A kept minute; None for anything else (nothing kept, or not ours)."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    try:
        minute, low, high, last = (int(part) for part in (text or "").split(":"))
    except ValueError:
        return None
    return ListenerMinute(minute, low, high, last)


@dataclass(frozen=True)
class ListenerHistory:
    """A channel's Pub/Sub listener counts over the last day, a minute at a time, oldest first."""

    minutes: list[ListenerMinute]
    now: float

    def _range(self, seconds: int) -> tuple[int, int] | None:
        """(lowest, highest) count in the minutes overlapping the last ``seconds``; None without samples."""
        since = self.now - seconds
        inside = [minute for minute in self.minutes if minute.minute + 60 > since]
        if not inside:
            return None
        return min(minute.low for minute in inside), max(minute.high for minute in inside)

    @property
    def last_hour(self) -> tuple[int, int] | None:
        """(lowest, highest) over the last hour."""
        return self._range(HOUR_SECONDS)

    @property
    def last_day(self) -> tuple[int, int] | None:
        """(lowest, highest) over the last 24 hours."""
        return self._range(DAY_SECONDS)

    @property
    def latest(self) -> int | None:
        """The newest sample's count."""
        return self.minutes[-1].last if self.minutes else None


def listeners_key(channel: str) -> str:
    """The Redis list that keeps a channel's listener minutes, newest first."""
    return f"{LISTENERS_KEY_PREFIX}{channel}"


def listeners_sample(*, now: float | None = None) -> int:
    """Count every topic channel's Pub/Sub listeners once and keep the count in its minute; how many topics.

    Run by one worker at a time (under a lease); a sample taken by another worker less than
    most of an interval ago makes this one skip, so several workers still sample once per interval.
    """
    now = time.time() if now is None else now
    client = bus_redis()
    sampled_at = client.get(LISTENERS_SAMPLED_AT_KEY)
    if sampled_at is not None and 0 <= now - float(sampled_at) < LISTENERS_SAMPLE_EVERY_SECONDS * 0.8:
        return 0
    channels = [topic.channel for topic in Topic.objects.order_by("name").only("name")]
    counts = subscribers_counts(channels)
    reads = client.pipeline(transaction=False)
    for channel in channels:
        reads.lindex(listeners_key(channel), 0)
    heads = reads.execute() if channels else []
    minute = int(now // 60) * 60
    writes = client.pipeline(transaction=False)
    for channel, head in zip(channels, heads, strict=True):
        key, count, kept = listeners_key(channel), counts.get(channel, 0), _minute_decoded(head)
        if kept is not None and kept.minute == minute:
            writes.lset(key, 0, kept.with_sample(count).encoded())
        else:
            writes.lpush(key, ListenerMinute(minute, count, count, count).encoded())
            writes.ltrim(key, 0, LISTENERS_KEEP_MINUTES - 1)
        writes.expire(key, DAY_SECONDS)  # a deleted topic's history goes with its last day
    writes.set(LISTENERS_SAMPLED_AT_KEY, repr(now), ex=DAY_SECONDS)
    writes.execute()
    return len(channels)


def listener_histories(channels: Sequence[str], *, now: float | None = None) -> dict[str, ListenerHistory]:
    """Each channel's listener minutes of the last day, in one round trip (raises when Redis is down)."""
    now = time.time() if now is None else now
    reads = bus_redis().pipeline(transaction=False)
    for channel in channels:
        reads.lrange(listeners_key(channel), 0, LISTENERS_KEEP_MINUTES - 1)
    histories = {}
    for channel, kept in zip(channels, reads.execute() if channels else [], strict=True):
        minutes = (_minute_decoded(raw) for raw in kept)
        recent = sorted(
            (minute for minute in minutes if minute is not None and minute.minute + 60 > now - DAY_SECONDS),
            key=lambda minute: minute.minute,
        )
        histories[channel] = ListenerHistory(recent, now)
    return histories


@dataclass(frozen=True)
class TopicDelivery:
    """A topic's stream as its subscribers read it."""

    topic: Topic
    reachable: bool
    stream_exists: bool
    followers: dict[str, GroupState] = field(default_factory=dict)  # by subscriber name
    unregistered: list[GroupState] = field(default_factory=list)
    listeners: int | None = None  # Pub/Sub clients on the channel now (seed-style subscribers are anonymous)
    history: ListenerHistory | None = None  # listeners over the last day (pages only)


def topic_delivery(topic: Topic, followers: Iterable[str], *, for_page: bool = False) -> TopicDelivery:
    """Read the topic's stream groups once; match them to the subscribers following it.

    ``for_page``: also the listeners over time, and whether each group's last delivered event is in history.
    """
    try:
        readings = stream_groups(topic.channel)
        history = listener_histories([topic.channel])[topic.channel] if for_page else None
    except (redis.RedisError, OSError):
        return TopicDelivery(topic, reachable=False, stream_exists=False)
    now_ms = int(time.time() * 1000)
    by_name = {reading.name: reading for reading in readings or []}
    recorded = _recorded(by_name.values()) if for_page else set()
    names = set(followers)

    def state(name: str, reading: GroupReading | None) -> GroupState:
        found = reading is not None and reading.last_delivered_envelope_id in recorded
        return GroupState(name, reading, now_ms, last_event_recorded=found)

    return TopicDelivery(
        topic,
        reachable=True,
        stream_exists=readings is not None,
        followers={name: state(name, by_name.get(name)) for name in sorted(names)},
        unregistered=[
            state(name, reading) for name, reading in sorted(by_name.items()) if name not in names and name != TAP_GROUP
        ],
        listeners=subscribers_count(topic.channel),
        history=history,
    )


def _recorded(readings: Iterable[GroupReading]) -> set[str]:
    """Which of the groups' last delivered envelope ids are in history (one lookup on the unique envelope id)."""
    ids = {reading.last_delivered_envelope_id for reading in readings if reading.last_delivered_envelope_id}
    return set(Event.objects.filter(envelope_id__in=ids).values_list("envelope_id", flat=True)) if ids else set()


def topic_delivery_read(topic: Topic) -> TopicDelivery:
    """The topic page's delivery: its followers' groups, unregistered ones, and its listeners over time."""
    followers = SubscriberFollow.objects.filter(topic=topic).values_list("subscriber__name", flat=True)
    return topic_delivery(topic, followers, for_page=True)


def deliveries(*, for_page: bool = False) -> list[TopicDelivery]:
    """Topics' delivery, one ``XINFO`` round per topic.

    For metrics, the followed topics; for a page, every topic (a group or a listener on a topic
    nobody registered to follow is not hidden), with listeners over time.
    """
    followers: dict[int, list[str]] = {}
    for follow in SubscriberFollow.objects.select_related("subscriber"):
        followers.setdefault(follow.topic_id, []).append(follow.subscriber.name)
    topics: QuerySet[Topic] = Topic.objects.order_by("name")
    if not for_page:
        topics = topics.filter(pk__in=followers)
    return [topic_delivery(topic, followers.get(topic.pk, []), for_page=for_page) for topic in topics]
