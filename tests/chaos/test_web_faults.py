"""A web process SIGKILLed in the middle of 1,000-event batches: every event answered is on the bus, once."""

from __future__ import annotations

import random
import time
from functools import partial

import pytest

from tests.chaos.harness import ApiLoad, Cluster, Report, WebProcess, api_row, api_scenario, finish
from tests.support import RedisServer, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.usefixtures("demo_committed")]

KILLS = 5
BATCH = 1000
# Per client; both together at most 500 events a second, so that the stream's retention (MAXLEN
# 100,000) keeps every event of the scenario and XRANGE can count each one.
BATCHES_PER_SECOND = 0.25


def test_web_processes_killed_in_the_middle_of_batches_lose_and_double_nothing(
    chaos_redis: RedisServer, token: str, report: Report
):
    # Two clients sending batches; a client whose server dies sends the same batch, same key, to the other.
    started, cluster, heard, bus, load = api_scenario(
        chaos_redis, token, clients=2, rate=BATCHES_PER_SECOND, batch=BATCH
    )
    chance = random.Random(14)  # noqa: S311 (when to kill, not a secret)
    try:
        load.start()
        load.wait_for_accepted(BATCH)
        for _ in range(KILLS):
            # In the middle of a batch: the server one has been in flight on for a random moment.
            delay = chance.uniform(0.02, 0.1)  # a batch takes 0.06 to 0.3 s here: most are in flight that long
            busy: list[WebProcess] = []
            wait_for(
                partial(_batch_in_flight, load, cluster, delay, busy),
                timeout=60,
                what=f"a batch in flight for {delay:.2f}s on a web server",
            )
            web = busy[0]
            web.kill()
            web.start()  # the same port: its clients come back to it
            fault_end = time.monotonic()
        load.wait_for_accepted(BATCH)
    finally:
        load.stop()
    row = api_row(
        f"e. web SIGKILL mid-batch x{KILLS}",
        load=load,
        cluster=cluster,
        bus=bus,
        heard=heard,
        fault_end=fault_end,
        expect_server_errors=False,
    )
    row.notes.append(
        f"batches of {BATCH:,}; kills per server {[web.killed for web in cluster.webs]}; "
        f"{load.connection_errors} requests cut by a kill and sent again"
    )
    finish(row, report=report, cluster=cluster, redis_url=chaos_redis.url(0), started=started)


def _batch_in_flight(load: ApiLoad, cluster: Cluster, since_at_least: float, found: list[WebProcess]) -> bool:
    """True (the server put in ``found``) once a batch has been in flight on a server that long."""
    now = time.monotonic()
    for port, since in list(load.in_flight.values()):
        if now - since >= since_at_least:
            found.append(next(web for web in cluster.webs if web.port == port))
            return True
    return False
