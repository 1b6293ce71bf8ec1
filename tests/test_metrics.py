"""/metrics for Prometheus: the bus's figures, served to this machine or to a scraper with the token."""

import pytest
from django.test import Client

from busapp.actions.dead_letters import dead_letter_create
from busapp.models import Event, Source, Topic
from busapp.publishing import TAP_GROUP as GROUP
from busapp.publishing import stream_key
from tests.support import publish_deduction

pytestmark = pytest.mark.usefixtures("demo_committed")


def _figure(text: str, name: str) -> float:
    [line] = [line for line in text.splitlines() if line.startswith(name + " ") or line.startswith(name + "{")]
    return float(line.rsplit(" ", 1)[1])


def test_the_figures_come_from_the_database_and_redis(bus):
    bus.xgroup_create(stream_key("tax-policy"), GROUP, id="0", mkstream=True)  # as a bus worker would
    for deduction in (1, 2, 3):
        publish_deduction(deduction)
    dead_letter_create(
        topic=Topic.objects.get(name="tax-policy"), raw="{}", errors=[], source=Source.CLI, actor="cli:test"
    )

    response = Client().get("/metrics")

    text = response.content.decode()
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    newest = Event.objects.order_by("-id").values_list("id", flat=True).first()
    assert _figure(text, "hms_bus_events_total") == newest  # the newest id: ids only grow, as rows are never deleted
    assert _figure(text, "hms_bus_events_pending") == 0
    assert _figure(text, "hms_bus_dead_letters_open") == 1
    assert _figure(text, 'hms_bus_tap_lag_entries{topic="tax-policy"}') == 3  # no worker read them yet
    assert _figure(text, "hms_bus_redis_up") == 1


def test_with_redis_down_the_metrics_still_answer_and_say_so(outage_redis):
    outage_redis.stop()
    publish_deduction(1)

    text = Client().get("/metrics").content.decode()

    assert _figure(text, "hms_bus_redis_up") == 0
    assert _figure(text, "hms_bus_events_pending") == 1


def test_a_scraper_elsewhere_needs_the_token(settings):
    settings.METRICS_TOKEN = "scrape-me-please"
    elsewhere = {"REMOTE_ADDR": "203.0.113.9"}

    refused = Client().get("/metrics", **elsewhere)
    wrong = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer nope", **elsewhere)
    allowed = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me-please", **elsewhere)

    assert refused.status_code == wrong.status_code == 403
    assert b"METRICS_TOKEN" in refused.content
    assert allowed.status_code == 200


def test_the_workers_heartbeats_and_loop_errors_are_figures(bus):
    import time

    from busapp.heartbeats import WORKERS_KEY, LoopState, WorkerBeat

    loops = {"tap": LoopState("running"), "relay": LoopState("retrying", errors=4, last_error="x", last_error_at=1.0)}
    bus.hset(WORKERS_KEY, "worker-a", WorkerBeat("worker-a", time.time() - 3, 1, time.time() - 60, loops).encode())
    bus.hset(WORKERS_KEY, "worker-b", WorkerBeat("worker-b", time.time() - 60, 2, time.time() - 90, {}).encode())

    text = Client().get("/metrics").content.decode()

    assert _figure(text, "hms_bus_workers_alive") == 1
    assert _figure(text, 'hms_bus_worker_loop_errors_total{loop="relay",worker="worker-a"}') == 4
    assert _figure(text, 'hms_bus_worker_heartbeat_age_seconds{worker="worker-b"}') >= 60
