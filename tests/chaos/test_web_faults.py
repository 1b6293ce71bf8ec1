"""A web process SIGKILLed in the middle of 1,000-event batches: every event answered is on the bus, once."""

from __future__ import annotations

import random
import time
from functools import partial

import pytest
import redis

from tests.chaos.harness import ApiLoad, Cluster, PubSubCounter, Report, api_row, finish
from tests.support import RedisServer, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.usefixtures("demo_committed")]

KILLS = 5
BATCH = 1000
# Per client; both together about 2,000 events a second, kept well under the stream's retention (MAXLEN).
BATCHES_PER_SECOND = 1.0


def test_web_processes_killed_in_the_middle_of_batches_lose_and_double_nothing(
    chaos_redis: RedisServer, token: str, report: Report
):
    started = time.monotonic()
    cluster = Cluster(chaos_redis, webs=2, workers=1)
    cluster.start()
    heard = PubSubCounter(chaos_redis.url(0))
    heard.start()
    bus = redis.Redis.from_url(chaos_redis.url(0))
    # Two clients sending batches; a client whose server dies sends the same batch, same key, to the other.
    load = ApiLoad(cluster.ports, token, clients=2, rate=BATCHES_PER_SECOND, batch=BATCH)
    chance = random.Random(14)  # noqa: S311 (when to kill, not a secret)
    try:
        load.start()
        load.wait_for_accepted(BATCH)
        for kill in range(KILLS):
            web = cluster.webs[kill % len(cluster.webs)]
            # In the middle of a batch: one has been in flight on this server for a random moment.
            delay = chance.uniform(0.02, 0.25)
            wait_for(
                partial(_batch_in_flight, load, web.port, delay),
                timeout=60,
                what=f"a batch in flight on :{web.port} for {delay:.2f}s",
            )
            web.kill()
            web.start()  # the same port: its clients come back to it
            fault_end = time.monotonic()
        load.wait_for_accepted(BATCH)
    finally:
        load.stop()
    try:
        row = api_row(
            f"e. web SIGKILL mid-batch x{KILLS}",
            load=load,
            cluster=cluster,
            bus=bus,
            heard=heard,
            fault_end=fault_end,
            expect_server_errors=False,
        )
    finally:
        heard.stop()
    row.notes.append(f"batches of {BATCH:,}; {load.connection_errors} requests cut by a kill and sent again")
    finish(row, report=report, cluster=cluster, redis_url=chaos_redis.url(0), started=started)


def _batch_in_flight(load: ApiLoad, port: int, since_at_least: float) -> bool:
    """True while a batch has been in flight on the server at ``port`` for at least that many seconds."""
    now = time.monotonic()
    return any(busy == port and now - since >= since_at_least for busy, since in list(load.in_flight.values()))
