"""Bus workers killed under load: what a dead worker held is claimed, and no externally published event is missed."""

from __future__ import annotations

import time

import pytest
import redis

from busapp.models import Event
from busapp.publishing import TAP_GROUP as GROUP
from busapp.publishing import stream_key
from tests.chaos.harness import (
    SCALE,
    TOPIC,
    Cluster,
    ExternalPublisher,
    PubSubCounter,
    Report,
    Row,
    duplicates,
    external_envelope,
    finish,
    group_pending,
    recorded_ids,
    scaled,
    stream_counts,
    wait_quiet,
    wait_until,
)
from tests.support import RedisServer, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.usefixtures("demo_committed")]

CLAIM_IDLE_MS = 2000
PUBLISH_RATE = 100.0  # the external load: 100 PUBLISH a second


def test_a_worker_killed_during_a_burst_leaves_nothing_unclaimed_or_unrecorded(
    chaos_redis: RedisServer, report: Report
):
    started = time.monotonic()
    burst = scaled(20_000, at_least=2_000)
    cluster = Cluster(chaos_redis, webs=0, workers=2, BUS_CLAIM_IDLE_MS=str(CLAIM_IDLE_MS))
    cluster.start()
    bus = redis.Redis.from_url(chaos_redis.url(0))
    wait_for(lambda: _consumers(bus) >= 0, timeout=10, what="the workers' consumer group on the topic stream")
    sent: list[str] = []
    pipe = bus.pipeline(transaction=False)
    for index in range(burst):  # a durable external publisher: XADD only, as fast as Redis takes it
        envelope_id, body = external_envelope(index)
        pipe.xadd(stream_key(TOPIC), {"event": body})
        sent.append(envelope_id)
        if len(pipe) == 500:
            pipe.execute()
    pipe.execute()

    # Kill a worker while it holds entries it read and has not acknowledged.
    seen: list[tuple[str, int]] = []

    def holding() -> bool:
        found = _holder(bus)
        if found and Event.objects.count() >= burst // 20:
            seen.append(found)
            return True
        return False

    # Looked at often: a fast tap holds a batch for a moment only.
    victim = wait_until(holding, timeout=60, every=0.01)
    name = seen[-1][0] if seen else cluster.workers[0].name
    cluster.worker(name).kill()
    killed_at = time.monotonic()
    held = _held_by(bus, name)
    expected = set(sent)
    recovered_at = wait_until(
        cluster=cluster,
        condition=lambda: (
            Event.objects.count() >= burst and not group_pending(bus) and recorded_ids(expected) == expected
        ),
    )
    wait_quiet(lambda: (Event.objects.count(), sum(group_pending(bus).values())))

    stream = stream_counts(bus)
    recorded = recorded_ids(expected)
    left = group_pending(bus)
    row = Row(
        "c. worker SIGKILL in a burst (2 workers)",
        accepted=len(sent),
        on_stream=len(stream),
        heard=None,
        recorded=Event.objects.count(),
        duplicated_stream=duplicates(stream),
        lost=len(expected - recorded),
        recovery=None if recovered_at is None else recovered_at - killed_at,
    )
    row.notes.append(
        f"{burst:,} XADD; killed {name} holding {held:,} unacknowledged entries; claim idle {CLAIM_IDLE_MS} ms"
    )
    if victim is None or not held:
        row.problems.append(
            f"the killed worker {name} held no unacknowledged entries: nothing was left for the survivor to claim"
        )
    if row.lost:
        row.problems.append(f"lost: {row.lost:,} of {burst:,} published entries never reached history")
    if row.recorded != burst:
        row.problems.append(f"history holds {row.recorded:,} events for {burst:,} distinct entries")
    if row.duplicated_stream:
        row.problems.append(f"duplicates: {row.duplicated_stream:,} extra copies on stream:{TOPIC}")
    if left:
        row.problems.append(f"entries never acknowledged (still pending in group {GROUP}): {left}")
    finish(row, report=report, cluster=cluster, redis_url=chaos_redis.url(0), started=started)


def _consumers(bus: redis.Redis) -> int:
    """How many consumers the group has on the topic stream; -1 while the group does not exist."""
    try:
        return len(bus.xinfo_consumers(stream_key(TOPIC), GROUP))
    except redis.ResponseError:
        return -1


def _held_by(bus: redis.Redis, consumer: str) -> int:
    """How many entries of the topic stream the consumer read and has not acknowledged."""
    for found in bus.xpending(stream_key(TOPIC), GROUP)["consumers"]:
        if (found["name"].decode() if isinstance(found["name"], bytes) else str(found["name"])) == consumer:
            return int(found["pending"])
    return 0


def _holder(bus: redis.Redis) -> tuple[str, int] | None:
    """The consumer holding the most unacknowledged entries of the topic stream, and how many; None if none holds."""
    try:
        consumers = bus.xpending(stream_key(TOPIC), GROUP)["consumers"]
    except redis.ResponseError:
        return None
    held = [
        (c["name"].decode() if isinstance(c["name"], bytes) else str(c["name"]), int(c["pending"])) for c in consumers
    ]
    held = [item for item in held if item[1] > 0]
    return max(held, key=lambda item: item[1]) if held else None


def test_the_listening_worker_killed_under_external_publish_load_misses_no_event(
    chaos_redis: RedisServer, report: Report
):
    started = time.monotonic()
    # What the killed worker had read and not yet acknowledged is claimed by the others (as in c).
    cluster = Cluster(chaos_redis, webs=0, workers=3, BUS_CLAIM_IDLE_MS=str(CLAIM_IDLE_MS))
    cluster.start()
    bus = redis.Redis.from_url(chaos_redis.url(0))
    heard = PubSubCounter(chaos_redis.url(0))
    heard.start()
    # Every worker listens (the counter is one more subscriber): what only the killed one heard would be lost.
    listeners = 1 + len(cluster.workers)
    wait_for(lambda: bus.pubsub_numsub(TOPIC)[0][1] >= listeners, timeout=30, what="every worker to listen on Pub/Sub")
    publisher = ExternalPublisher(chaos_redis.url(0), rate=PUBLISH_RATE)
    after_kill = max(12.0, 20.0 * SCALE)
    try:
        publisher.start()
        wait_for(lambda: len(publisher.sent) >= 200, timeout=30, what="200 external publishes")
        # Every worker listens to Pub/Sub (the first to hear a message copies it): kill one of them.
        leader_name = cluster.workers[0].name
        cluster.worker(leader_name).kill()
        killed_at = time.monotonic()
        # Keep publishing through the time the lost leader's lease takes to run out, and beyond.
        wait_for(lambda: time.monotonic() - killed_at >= after_kill, timeout=after_kill + 5, what="the load to run")
    finally:
        publisher.stop()
    expected = set(publisher.sent)
    recovered_at = wait_until(lambda: recorded_ids(expected) == expected, cluster=cluster)
    wait_quiet(lambda: (Event.objects.count(), heard.total))
    heard.stop()

    recorded = recorded_ids(expected)
    missing = expected - recorded
    row = Row(
        "d. listening worker SIGKILL (3 workers)",
        accepted=len(expected),
        on_stream=None,
        heard=len(heard.counts),
        recorded=Event.objects.count(),
        duplicated_pubsub=duplicates(heard.counts),
        lost=len(missing),
        recovery=None if recovered_at is None else recovered_at - killed_at,
    )
    row.notes.append(
        f"{PUBLISH_RATE:.0f} PUBLISH/s for {len(expected) / PUBLISH_RATE:.0f} s; killed {leader_name} "
        f"(one of the listeners: every worker listens); {publisher.failed} publishes failed"
    )
    if missing:
        row.problems.append(
            f"lost: {len(missing):,} of {len(expected):,} externally published events never reached history "
            f"(e.g. {sorted(missing)[:3]})"
        )
    if row.recorded != len(expected):
        row.problems.append(f"history holds {row.recorded:,} events for {len(expected):,} published")
    if row.duplicated_pubsub:
        row.problems.append(f"duplicates: {row.duplicated_pubsub:,} extra copies heard on Pub/Sub")
    finish(row, report=report, cluster=cluster, redis_url=chaos_redis.url(0), started=started)
