"""Malformed messages on PUBLISH and XADD among valid events: dead-lettered and acknowledged, workers alive."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from busapp.models import DeadLetter, Event
from busapp.publishing import stream_key
from tests.chaos.harness import (
    TOPIC,
    Cluster,
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

DEEP = 100_000  # nesting of the deepest arrays sent
TEN_MB = 10 * 1024 * 1024
VALID_EVERY = 10  # one valid event after every ten malformed ones


def _envelope_text(payload_json: str) -> str:
    """An envelope (the seed's keys, a fresh id) around a payload given as JSON text, as a publisher might write it."""
    head = f'"id": "{uuid.uuid4()}", "type": "tax_policy.updated", "timestamp": {time.time()}'
    return f'{{{head}, "payload": {payload_json}}}'


def malformed(count: int) -> Iterator[tuple[str, bytes]]:
    """``count`` malformed bodies, each with what it is: every kind the bus may carry that no tap may choke on."""
    kinds = [
        ("random bytes", lambda: secrets.token_bytes(1 + secrets.randbelow(512))),
        ("not JSON", lambda: f"<html>standard_deduction={secrets.randbelow(99999)}</html>".encode()),
        ("UTF-16 envelope", lambda: external_envelope()[1].encode("utf-16")),
        ("UTF-32 envelope", lambda: external_envelope()[1].encode("utf-32")),
        ("lone surrogate", lambda: _envelope_text('{"standard_deduction": 1, "note": "\\ud800"}').encode()),
        ("NUL in a string", lambda: _envelope_text('{"standard_deduction": 1, "note": "a\\u0000b"}').encode()),
        ("JSON, not an envelope", lambda: json.dumps([{"id": secrets.randbelow(9)}, "x", None]).encode()),
        (
            "payload nested 1,000 deep",
            lambda: _envelope_text('{"standard_deduction": 1, "deep": ' + "[" * 1000 + "]" * 1000 + "}").encode(),
        ),
        ("fails the schema", lambda: _envelope_text('{"standard_deduction": -1}').encode()),
    ]
    for index in range(count):
        if index in (count // 2, count // 2 + 1):  # one on each path
            yield "10 MB body", (b'{"id": "%s", "junk": "' % str(uuid.uuid4()).encode()) + b"x" * TEN_MB + b'"}'
        elif index % 250 == 0:
            yield f"arrays nested {DEEP:,} deep", b"[" * DEEP + b"]" * DEEP
        else:
            name, make = kinds[index % len(kinds)]
            yield name, make()


def test_malformed_messages_are_dead_lettered_and_acknowledged_and_every_valid_event_recorded(report: Report):
    started = time.monotonic()
    # Pub/Sub clients may fall 10 MB behind here: Redis's default limit would disconnect them
    # (losing valid events for reasons of Redis's, not the product's).
    server = RedisServer("--client-output-buffer-limit", "pubsub 512mb 256mb 60")
    server.start()
    try:
        _scenario(server, report, started)
    finally:
        server.stop()


def _scenario(server: RedisServer, report: Report, started: float) -> None:
    count = scaled(10_000, at_least=2_000)
    cluster = Cluster(server, webs=0, workers=2)
    cluster.start()
    bus = redis.Redis.from_url(server.url(0))
    heard = PubSubCounter(server.url(0))
    heard.start()
    wait_for(lambda: bus.pubsub_numsub(TOPIC)[0][1] >= 2, timeout=30, what="a worker to listen on Pub/Sub")

    valid: list[str] = []
    kinds: dict[str, int] = {}
    # Each stream entry is its own dead letter. On Pub/Sub a message carries no id: the same bytes
    # heard again within the workers' heard window are one message to them (every worker listens,
    # and the first to hear a message copies it), so each distinct published body is one letter.
    streamed, published = 0, set()
    pipe = bus.pipeline(transaction=False)
    for index, (kind, body) in enumerate(malformed(count)):
        kinds[kind] = kinds.get(kind, 0) + 1
        on_stream = index % 2 == 1  # half on each path, every kind on both
        if on_stream:
            pipe.xadd(stream_key(TOPIC), {"event": body})
            streamed += 1
        else:
            pipe.publish(TOPIC, body)
            published.add(body)
        if index % VALID_EVERY == 0:
            envelope_id, envelope = external_envelope(index)
            valid.append(envelope_id)
            if (index // VALID_EVERY) % 2:
                pipe.publish(TOPIC, envelope)
            else:
                pipe.xadd(stream_key(TOPIC), {"event": envelope})
        if len(pipe) >= 100:
            pipe.execute()
    pipe.execute()
    sent_at = time.monotonic()
    expected = set(valid)
    letters_expected = streamed + len(published)

    def settled() -> bool:
        return (
            DeadLetter.objects.count() >= letters_expected
            and not group_pending(bus)
            and recorded_ids(expected) == expected
            and all(worker.died() is None for worker in cluster.workers)
        )

    recovered_at = wait_until(settled, cluster=cluster)
    wait_quiet(lambda: (Event.objects.count(), DeadLetter.objects.count(), sum(group_pending(bus).values())))
    heard.stop()

    stream = stream_counts(bus)
    recorded = recorded_ids(expected)
    letters = DeadLetter.objects.count()
    left = group_pending(bus)
    row = Row(
        "h. malformed messages",
        accepted=len(expected),
        on_stream=len(expected & set(stream)),
        heard=len(expected & set(heard.counts)),
        recorded=Event.objects.count(),
        duplicated_stream=duplicates(stream, among=expected),
        duplicated_pubsub=duplicates(heard.counts, among=expected),
        lost=len(expected - recorded),
        recovery=None if recovered_at is None else recovered_at - sent_at,
    )
    row.notes.append(
        f"{count:,} malformed ({', '.join(f'{kind}: {n:,}' for kind, n in kinds.items())}); {letters:,} dead letters "
        f"({streamed:,} streamed, {len(published):,} distinct published)"
    )
    if row.lost:
        row.problems.append(f"lost: {row.lost:,} of {len(expected):,} valid events never reached history")
    if row.recorded != len(expected):
        row.problems.append(f"history holds {row.recorded:,} events for {len(expected):,} valid ones sent")
    if letters != letters_expected:
        row.problems.append(
            f"{letters:,} dead letters for {count:,} malformed messages: {streamed:,} on the stream and "
            f"{len(published):,} distinct bodies on Pub/Sub, one each"
        )
    if left:
        row.problems.append(f"entries never acknowledged (still pending): {left}")
    if row.duplicated_stream or row.duplicated_pubsub:
        row.problems.append(
            f"duplicates of valid events: {row.duplicated_stream:,} on the stream, {row.duplicated_pubsub:,} on Pub/Sub"
        )
    finish(row, report=report, cluster=cluster, redis_url=server.url(0), started=started)
