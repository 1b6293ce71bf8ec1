"""Delivery as Redis sees it: each subscriber's consumer group on a topic's stream, its lag, pending and consumers.

A subscriber reads ``stream:<topic>`` through a consumer group named after it. The group's
lag (entries not yet delivered) and the age of its oldest undelivered entry say how far behind
it is; pending entries were delivered but not acknowledged. Groups no subscriber is registered
for are shown as unregistered, so nothing listening is hidden; a missing stream is said so.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis

from busapp.models import SubscriberFollow, Topic
from busapp.publishing import TAP_GROUP, GroupReading, stream_groups, subscribers_count


@dataclass(frozen=True)
class GroupState:
    """One consumer group's delivery: lag in entries and seconds, pending, consumers, or that it is missing."""

    name: str
    reading: GroupReading | None  # None: the subscriber has no consumer group on the stream (yet)
    now_ms: int

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
class TopicDelivery:
    """A topic's stream as its subscribers read it."""

    topic: Topic
    reachable: bool
    stream_exists: bool
    followers: dict[str, GroupState] = field(default_factory=dict)  # by subscriber name
    unregistered: list[GroupState] = field(default_factory=list)
    listeners: int | None = None  # Pub/Sub clients on the channel now (seed-style subscribers are anonymous)


def topic_delivery(topic: Topic, followers: Iterable[str]) -> TopicDelivery:
    """Read the topic's stream groups once; match them to the subscribers following it."""
    try:
        readings = stream_groups(topic.channel)
    except (redis.RedisError, OSError):
        return TopicDelivery(topic, reachable=False, stream_exists=False)
    now_ms = int(time.time() * 1000)
    by_name = {reading.name: reading for reading in readings or []}
    names = set(followers)
    return TopicDelivery(
        topic,
        reachable=True,
        stream_exists=readings is not None,
        followers={name: GroupState(name, by_name.get(name), now_ms) for name in sorted(names)},
        unregistered=[
            GroupState(name, reading, now_ms)
            for name, reading in sorted(by_name.items())
            if name not in names and name != TAP_GROUP
        ],
        listeners=subscribers_count(topic.channel),
    )


def deliveries() -> list[TopicDelivery]:
    """Every followed topic's delivery, one ``XINFO`` round per topic."""
    followers: dict[int, list[str]] = {}
    topics: dict[int, Topic] = {}
    for follow in SubscriberFollow.objects.select_related("topic", "subscriber"):
        followers.setdefault(follow.topic_id, []).append(follow.subscriber.name)
        topics[follow.topic_id] = follow.topic
    return [
        topic_delivery(topics[pk], names) for pk, names in sorted(followers.items(), key=lambda kv: topics[kv[0]].name)
    ]
