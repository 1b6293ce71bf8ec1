"""Delivery over time: Pub/Sub listeners sampled by a worker, and the topic page's delivery section."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.utils.html import strip_tags

from busapp.delivery import (
    DAY_SECONDS,
    LISTENERS_KEEP_MINUTES,
    listener_histories,
    listeners_key,
    listeners_sample,
)
from busapp.models import Event
from busapp.publishing import TAP_GROUP, stream_key
from busapp.worker import LEASE_PREFIX, BusWorker
from busapp.worker.jobs import jobs_table
from tests.support import RedisServer, publish_deduction, signed_in, wait_for

# A minute's start, plus 5 s: samples 10 s apart stay in one minute.
START = dt.datetime(2031, 3, 4, 9, 30, 5, tzinfo=dt.UTC)


def _numsub(bus: redis.Redis, channel: str = "tax-policy") -> int:
    return int(bus.pubsub_numsub(channel)[0][1])


@pytest.fixture
def listener(bus: redis.Redis, suite_redis: RedisServer) -> Iterator[Any]:
    """A real Pub/Sub client (as a seed-style subscriber is) on tax-policy; closed after the test."""
    pubsub = redis.Redis.from_url(suite_redis.url(0)).pubsub()
    pubsub.subscribe("tax-policy")
    wait_for(lambda: _numsub(bus) == 1, timeout=5, what="the listener to subscribe")
    yield pubsub
    pubsub.close()


def _text(response: Any) -> str:
    return " ".join(strip_tags(response.content.decode()).split())


def _section(response: Any, element_id: str) -> str:
    """The text of the element with that id, up to its section's end."""
    html = response.content.decode()
    start = html.index(f'id="{element_id}"')
    return " ".join(strip_tags(html[start : html.index("</section>", start)]).split())


# The worker's sample


@pytest.mark.usefixtures("demo")
def test_a_sample_counts_a_real_pubsub_client_and_then_its_leaving(bus, listener, time_machine):
    time_machine.move_to(START, tick=False)
    assert listeners_sample() == 2  # both demo topics

    assert listener_histories(["tax-policy"])["tax-policy"].latest == 1
    listener.close()
    wait_for(lambda: _numsub(bus) == 0, timeout=5, what="Redis to see the listener leave")
    time_machine.move_to(START + dt.timedelta(seconds=10), tick=False)
    listeners_sample()

    history = listener_histories(["tax-policy", "irs.withholding"])
    assert (history["tax-policy"].latest, history["tax-policy"].last_hour) == (0, (0, 1))  # one minute, both seen
    assert len(history["tax-policy"].minutes) == 1
    assert (history["irs.withholding"].latest, history["irs.withholding"].last_day) == (0, (0, 0))


@pytest.mark.usefixtures("demo")
def test_a_second_sample_within_the_interval_is_skipped_so_several_workers_sample_once(bus, listener, time_machine):
    time_machine.move_to(START, tick=False)
    listeners_sample()
    listener.close()
    wait_for(lambda: _numsub(bus) == 0, timeout=5, what="Redis to see the listener leave")

    time_machine.move_to(START + dt.timedelta(seconds=3), tick=False)  # another worker's turn came early

    assert listeners_sample() == 0
    assert listener_histories(["tax-policy"])["tax-policy"].minutes[0].low == 1  # the leaving was not sampled


@pytest.mark.usefixtures("demo")
def test_the_history_keeps_one_day_of_minutes_at_most(bus, listener, time_machine):
    for minute in range(LISTENERS_KEEP_MINUTES + 30):
        time_machine.move_to(START + dt.timedelta(minutes=minute), tick=False)
        listeners_sample()

    assert bus.llen(listeners_key("tax-policy")) == LISTENERS_KEEP_MINUTES
    assert 0 < bus.ttl(listeners_key("tax-policy")) <= DAY_SECONDS  # a deleted topic's history goes too
    minutes = listener_histories(["tax-policy"])["tax-policy"].minutes
    newest = START.timestamp() // 60 * 60 + (LISTENERS_KEEP_MINUTES + 29) * 60
    assert minutes[-1].minute == newest
    assert minutes[0].minute > newest - DAY_SECONDS


@pytest.mark.usefixtures("demo")
def test_minutes_older_than_a_day_are_not_shown_when_sampling_stopped(bus, listener, time_machine):
    time_machine.move_to(START, tick=False)
    listeners_sample()

    time_machine.move_to(START + dt.timedelta(hours=25), tick=False)  # no worker sampled since

    history = listener_histories(["tax-policy"])["tax-policy"]
    assert (history.minutes, history.last_day) == ([], None)


@pytest.mark.usefixtures("demo_committed", "sync_thread_connection_closed")
async def test_the_workers_job_samples_under_its_lease_and_waits_while_another_worker_holds_it(bus, listener):
    [job] = [job for job in jobs_table(layer=None) if job.name == "listeners"]
    assert job.lease_seconds is not None
    worker = BusWorker(name="sampler")
    other = bus.lock(f"{LEASE_PREFIX}{job.name}", timeout=30)
    try:
        assert other.acquire(blocking=False)
        assert await worker.leased(job.name, job.lease_seconds, job.step) is None
        assert bus.exists(listeners_key("tax-policy")) == 0
        other.release()

        assert await worker.leased(job.name, job.lease_seconds, job.step) == 2
    finally:
        await worker.redis.aclose()
    assert listener_histories(["tax-policy"])["tax-policy"].latest == 1


# The topic page's delivery section


def _published(capture: Any, count: int) -> list[Event]:
    """``count`` events on tax-policy, sent to Redis as their commit does."""
    with capture(execute=True):
        return [publish_deduction(14600 + n) for n in range(count)]


@pytest.fixture
def delivered(demo, bus, django_capture_on_commit_callbacks) -> list[Event]:
    """Three events on tax-policy; e-file's group was given two and acknowledged none; a group nobody registered."""
    events = _published(django_capture_on_commit_callbacks, 3)
    key = stream_key("tax-policy")
    bus.xgroup_create(key, "e-file", id="0")
    bus.xreadgroup("e-file", "efile-1", {key: ">"}, count=2)
    bus.xgroup_create(key, "mystery-reader", id="0")
    bus.xgroup_create(key, TAP_GROUP, id="$")
    return events


def test_the_topic_page_shows_a_real_groups_lag_pending_consumer_and_last_delivered_event(delivered):
    response = signed_in("policy").get("/topics/tax-policy/")  # policy staff may view the topic

    assert response.status_code == 200
    delivery = _section(response, "delivery")
    assert re.search(r"e-file 1 \d+\.\d 2 efile-1 \(\d+ s\) " + delivered[1].envelope_id, delivery)
    assert f'href="/events/{delivered[1].envelope_id}/"' in response.content.decode()
    assert "mystery-reader unregistered 3 " in delivery
    assert "mobile-tax-app no consumer group on the stream yet" in delivery
    assert TAP_GROUP not in delivery


def test_a_deleted_stream_is_said_so_with_the_followers_whose_groups_went_with_it(delivered, bus):
    bus.delete(stream_key("tax-policy"))

    delivery = _section(signed_in("auditor").get("/topics/tax-policy/"), "delivery")

    assert "The stream stream:tax-policy does not exist (deleted, or Redis restarted empty)" in delivery
    assert "Followed by analytics-dashboard, e-file, mobile-tax-app, withholding-calculator" in delivery
    assert "Lag (entries)" not in delivery  # no table of zeros


@pytest.mark.usefixtures("demo")
def test_with_redis_stopped_the_topic_page_still_opens_and_says_redis_is_not_answering(outage_redis):
    outage_redis.stop()

    response = signed_in("auditor").get("/topics/tax-policy/")

    assert response.status_code == 200
    assert "Redis is not answering: delivery and listeners cannot be read now." in _section(response, "delivery")


def test_the_topic_page_and_the_subscribers_page_show_the_same_listeners_over_time(demo, bus, listener, time_machine):
    time_machine.move_to(START, tick=False)
    listeners_sample()
    time_machine.move_to(START + dt.timedelta(hours=2), tick=False)  # an hour with no worker: a gap
    listeners_sample()

    topic_page = signed_in("policy").get("/topics/tax-policy/")
    subscribers_page = signed_in("auditor").get("/subscribers/")

    for page in (topic_page, subscribers_page):
        html = page.content.decode()
        start = html.index('id="listeners-tax-policy"')
        block = html[start : html.index("</div>", start)]
        said = " ".join(strip_tags(block).split())
        assert "Pub/Sub listeners on tax-policy: 1 now · last hour 1\N{EN DASH}1 · last 24 h 1\N{EN DASH}1" in said
        assert block.count('<polyline class="high"') == 2  # two runs of samples, the gap between them
        assert "style=" not in block  # the CSP allows no inline style: the sparkline is styled by app.css


@pytest.mark.usefixtures("demo")
def test_a_topic_never_sampled_says_so(bus):
    said = _section(signed_in("auditor").get("/topics/irs.withholding/"), "delivery")

    assert "Pub/Sub listeners on irs.withholding: 0 now" in said
    assert "No samples yet: a bus worker counts them every 10 s." in said


@pytest.mark.usefixtures("demo")
def test_metrics_export_each_topics_pubsub_listeners(bus, listener):
    text = signed_in("admin").get("/metrics").content.decode()

    assert 'hms_pubsub_listeners{topic="tax-policy"} 1.0' in text
    assert 'hms_pubsub_listeners{topic="irs.withholding"} 0.0' in text
