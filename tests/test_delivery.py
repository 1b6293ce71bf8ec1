"""Delivery as Redis sees it: each subscriber's consumer group, its lag and pending, unregistered groups, no stream."""

from __future__ import annotations

import time

import pytest
import redis
from django.utils.html import strip_tags

from busapp.delivery import topic_delivery
from busapp.models import Topic
from busapp.publishing import TAP_GROUP, stream_key
from tests.support import signed_in

pytestmark = pytest.mark.usefixtures("demo")

FOLLOWERS = ["e-file", "withholding-calculator", "mobile-tax-app", "analytics-dashboard"]


def _stream_with_known_positions(bus: redis.Redis) -> str:
    """Three entries written 30, 20 and 10 s ago; e-file was given two and acknowledged one; others as named."""
    key = stream_key("tax-policy")
    now_ms = int(time.time() * 1000)
    ids = [f"{now_ms - seconds * 1000}-0" for seconds in (30, 20, 10)]
    for entry_id in ids:
        bus.xadd(key, {"event": "{}"}, id=entry_id)
    bus.xgroup_create(key, "e-file", id="0")
    bus.xreadgroup("e-file", "efile-1", {key: ">"}, count=2)
    bus.xack(key, "e-file", ids[0])
    bus.xgroup_create(key, "mobile-tax-app", id="$")  # up to date
    bus.xgroup_create(key, "mystery-reader", id="0")  # nobody registered it
    bus.xgroup_create(key, TAP_GROUP, id="$")  # the dashboard's own tap
    return ids[2]


def test_each_subscribers_lag_and_pending_are_what_xinfo_says(bus: redis.Redis) -> None:
    third = _stream_with_known_positions(bus)

    delivery = topic_delivery(Topic.objects.get(name="tax-policy"), FOLLOWERS)

    efile = delivery.followers["e-file"]
    assert efile.reading is not None
    assert (efile.lag_entries, efile.reading.pending, efile.reading.oldest_undelivered_id) == (1, 1, third)
    assert efile.lag_seconds is not None
    assert 9 <= efile.lag_seconds < 60  # the third entry was written 10 s ago
    assert [name for name, _, _ in efile.reading.consumers] == ["efile-1"]
    mobile = delivery.followers["mobile-tax-app"]
    assert (mobile.lag_entries, mobile.lag_seconds) == (0, 0.0)
    assert delivery.followers["withholding-calculator"].reading is None  # has not started reading
    assert [state.name for state in delivery.unregistered] == ["mystery-reader"]  # the tap's own is not listed
    assert delivery.unregistered[0].lag_entries == 3


def test_a_stream_that_disappeared_is_said_so_not_shown_as_no_lag(bus: redis.Redis) -> None:
    _stream_with_known_positions(bus)
    bus.delete(stream_key("tax-policy"))

    delivery = topic_delivery(Topic.objects.get(name="tax-policy"), FOLLOWERS)

    assert (delivery.reachable, delivery.stream_exists) == (True, False)
    assert all(state.reading is None and state.lag_entries is None for state in delivery.followers.values())


def test_the_subscribers_page_shows_the_groups_the_unregistered_one_and_a_missing_stream(bus: redis.Redis) -> None:
    _stream_with_known_positions(bus)

    page = " ".join(strip_tags(signed_in("auditor").get("/subscribers/").content.decode()).split())

    assert "e-file 1 " in page
    assert "mystery-reader unregistered 3" in page
    assert "withholding-calculator no consumer group on the stream yet" in page
    assert "stream:irs.withholding does not exist" in page  # nothing published there in this test


def test_metrics_export_each_subscribers_lag(bus: redis.Redis) -> None:
    _stream_with_known_positions(bus)

    text = signed_in("admin").get("/metrics").content.decode()

    assert 'hms_subscriber_lag_entries{subscriber="e-file",topic="tax-policy"} 1.0' in text
    assert 'hms_subscriber_lag_entries{subscriber="mobile-tax-app",topic="tax-policy"} 0.0' in text
    assert 'lag_entries{subscriber="withholding-calculator",topic="tax-policy"' not in text  # no group: no figure
