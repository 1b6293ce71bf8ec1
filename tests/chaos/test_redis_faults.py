"""Redis fails under API load (4 clients, 2 web processes, 1 worker): nothing accepted is lost or sent twice."""

from __future__ import annotations

import time

import pytest

from tests.chaos.harness import Report, api_row, api_scenario, finish, stream_counts
from tests.support import RedisServer

pytestmark = [pytest.mark.chaos, pytest.mark.usefixtures("demo_committed")]

OUTAGE_SECONDS = 10.0
STALL_SECONDS = 7.0


def test_redis_killed_and_restarted_empty_under_api_load_loses_and_doubles_nothing(
    chaos_redis: RedisServer, token: str, report: Report
):
    started, cluster, heard, bus, load = api_scenario(chaos_redis, token)
    try:
        load.start()
        load.wait_for_accepted(100)
        # What the stream held just before the crash, which the restarted (empty) Redis no longer has.
        before = stream_counts(bus)
        killed_at = time.monotonic()
        chaos_redis.kill()
        time.sleep(OUTAGE_SECONDS)  # the outage itself: the fault being injected, not a wait for something
        chaos_redis.restart()
        fault_end = time.monotonic()
        load.wait_for_accepted(100)
    finally:
        load.stop()
    # A send Redis ran and then lost with its whole dataset before answering may go out again:
    # the API had answered it pending, and it was on the bus before the crash.
    exempt = {
        envelope_id
        for envelope_id in load.accepted_pending
        if envelope_id in before or heard.first_heard.get(envelope_id, float("inf")) <= killed_at
    }
    row = api_row(
        "a. Redis SIGKILL, restart empty",
        load=load,
        cluster=cluster,
        bus=bus,
        heard=heard,
        fault_end=fault_end,
        stream_before=before,
        exempt=exempt,
    )
    finish(row, report=report, cluster=cluster, redis_url=chaos_redis.url(0), started=started)


def test_redis_stalled_seven_seconds_under_api_load_loses_and_doubles_nothing(
    chaos_redis: RedisServer, token: str, report: Report
):
    started, cluster, heard, bus, load = api_scenario(chaos_redis, token)
    try:
        load.start()
        load.wait_for_accepted(100)
        chaos_redis.pause()
        time.sleep(STALL_SECONDS)  # the stall itself: the fault being injected
        chaos_redis.resume()
        fault_end = time.monotonic()
        load.wait_for_accepted(100)
    finally:
        chaos_redis.resume()
        load.stop()
    row = api_row("b. Redis SIGSTOP 7 s", load=load, cluster=cluster, bus=bus, heard=heard, fault_end=fault_end)
    finish(row, report=report, cluster=cluster, redis_url=chaos_redis.url(0), started=started)
