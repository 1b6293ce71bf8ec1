"""hms_subscriber in real processes beside the seed's refund_service: once per envelope id, receipts, claims."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis

from hms_subscriber import detail_fit
from tests.support import ROOT, OutputWatcher, RedisServer, free_port, manage_env, publish_deduction, wait_for

SCRIPT = ROOT / "tests" / "subscribers" / "mobile_tax_app.py"
NAME = "mobile-tax-app"
STREAM = "stream:tax-policy"


class Subscribers:
    """Starts mobile_tax_app.py instances (each its own consumer) and stops whatever is left at the end."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.started: list[OutputWatcher] = []

    def start(self, consumer: str, **env: str) -> OutputWatcher:
        """Start an instance and wait until it has joined, drained and caught up."""
        process = subprocess.Popen(
            [sys.executable, "-u", str(SCRIPT)],
            cwd=ROOT,
            # As a service team would install it: the package is importable, nothing of the project is set up.
            env={**os.environ, "PYTHONPATH": str(ROOT), "HMS_REDIS_URL": self.redis_url, "HMS_CONSUMER": consumer}
            | env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        watcher = OutputWatcher(process)
        self.started.append(watcher)
        watcher.wait_for_line(f"ready: consumer {consumer}", timeout=15)
        return watcher

    def stop_all(self) -> None:
        """Terminate every instance still running."""
        for watcher in self.started:
            watcher.stop()


@pytest.fixture
def subscribers(bus: redis.Redis, suite_redis: RedisServer) -> Iterator[Subscribers]:
    started = Subscribers(suite_redis.url(0))
    yield started
    started.stop_all()


def _receipts(client):
    return [json.loads(fields[b"receipt"]) for _, fields in client.xrange("hms:receipts")]


def _acknowledged(client: redis.Redis) -> None:
    """Wait until the group holds nothing pending: every receipt was written in the same MULTI as its ack."""
    wait_for(lambda: client.xpending(STREAM, NAME)["pending"] == 0, timeout=15, what="the group to ack everything")


def _deductions(watcher: OutputWatcher) -> list[str]:
    return [line for line in watcher.lines if line.startswith("New deduction = ")]


def _applied(event, deduction: int) -> dict:
    return {
        "event": str(event.envelope_id),
        "subscriber": NAME,
        "status": "applied",
        "detail": f"showing {deduction} in the app",
    }


@pytest.mark.usefixtures("demo_committed")
def test_the_seed_subscriber_and_an_hms_subscriber_both_print_the_deduction_and_one_receipt_is_written(
    bus, refund_service, subscribers
):
    app = subscribers.start("app-1")

    event = publish_deduction(15000)

    refund_service.wait_for_line("New deduction = 15000")
    app.wait_for_line("New deduction = 15000")
    _acknowledged(bus)
    assert _receipts(bus) == [_applied(event, 15000)]
    assert _deductions(app) == ["New deduction = 15000"]
    assert [group["name"] for group in bus.xinfo_groups(STREAM)] == [NAME.encode()]


@pytest.mark.usefixtures("demo_committed")
def test_an_entry_held_by_an_instance_killed_with_sigkill_is_claimed_and_applied_once_by_another(bus, subscribers):
    holder = subscribers.start("app-holder", HMS_HOLD="15000", HMS_CLAIM_IDLE="1")
    event = publish_deduction(15000)
    holder.wait_for_line("Holding 15000")
    assert bus.xpending(STREAM, NAME)["consumers"] == [{"name": b"app-holder", "pending": 1}]

    holder.process.kill()
    holder.process.wait(timeout=10)
    taker = subscribers.start("app-taker", HMS_CLAIM_IDLE="1")

    taker.wait_for_line("New deduction = 15000", timeout=15)
    _acknowledged(bus)
    assert _receipts(bus) == [_applied(event, 15000)]
    assert (_deductions(holder), _deductions(taker)) == ([], ["New deduction = 15000"])
    assert taker.count("claimed 1 idle entries of stream:tax-policy") == 1


@pytest.mark.usefixtures("demo_committed")
def test_an_instance_restarted_under_its_consumer_name_finishes_its_own_pending_entry_at_once(bus, subscribers):
    crashed = subscribers.start("app-fixed", HMS_HOLD="15000")
    event = publish_deduction(15000)
    crashed.wait_for_line("Holding 15000")
    crashed.process.kill()
    crashed.process.wait(timeout=10)

    restarted = subscribers.start("app-fixed")  # claim idle 60 s: only its own pending read can apply it now

    assert _deductions(restarted) == ["New deduction = 15000"]
    _acknowledged(bus)
    assert _receipts(bus) == [_applied(event, 15000)]


@pytest.mark.usefixtures("demo_committed")
def test_a_restarted_subscriber_applies_what_was_published_while_it_was_down_once_in_order(bus, subscribers):
    first_run = subscribers.start("app-1")
    first_run.process.send_signal(signal.SIGTERM)
    assert first_run.process.wait(timeout=10) == 0
    first_run.wait_for_line("mobile-tax-app stopped")

    missed = [publish_deduction(14000), publish_deduction(15000)]
    second_run = subscribers.start("app-2")
    _acknowledged(bus)
    second_run.stop()
    third_run = subscribers.start("app-3")

    assert _deductions(second_run) == ["New deduction = 14000", "New deduction = 15000"]
    assert _receipts(bus) == [_applied(missed[0], 14000), _applied(missed[1], 15000)]
    assert _deductions(third_run) == []


@pytest.mark.usefixtures("demo_committed")
def test_malformed_entries_are_acknowledged_those_with_an_id_rejected_and_the_next_event_applied(bus, subscribers):
    app = subscribers.start("app-1")
    bus.xadd(STREAM, {"event": "not json"})
    bus.xadd(STREAM, {"event": "[1, 2]"})
    bus.xadd(STREAM, {"something": "else"})
    bus.xadd(STREAM, {"event": json.dumps({"id": "no-type", "payload": {}})})
    bus.xadd(STREAM, {"event": json.dumps({"id": "no-deduction", "type": "tax_policy.updated", "payload": {}})})

    event = publish_deduction(15000)

    app.wait_for_line("New deduction = 15000")
    _acknowledged(bus)
    assert _receipts(bus) == [
        {
            "event": "no-type",
            "subscriber": NAME,
            "status": "rejected",
            "detail": "malformed envelope: its type is missing or not a string",
        },
        {"event": "no-deduction", "subscriber": NAME, "status": "rejected", "detail": "'standard_deduction'"},
        _applied(event, 15000),
    ]
    assert app.count("dropped entry") == 3
    assert app.process.poll() is None


@contextlib.contextmanager
def _web(redis_url: str) -> Iterator[str]:
    """The dashboard's ASGI server in a process of its own; its base URL."""
    port = free_port()
    server = OutputWatcher(
        subprocess.Popen(
            [str(ROOT / ".venv/bin/uvicorn"), "hmsadmin.asgi:application", "--port", str(port)],
            cwd=ROOT,
            env=manage_env(redis_url),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    )
    try:
        server.wait_for_line("Uvicorn running", timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.mark.usefixtures("demo_committed")
def test_a_new_subscriber_catches_up_on_the_event_in_force_from_the_api_once(bus, suite_redis, subscribers):
    from tests.test_api import _token

    publish_deduction(14000)
    in_force = publish_deduction(15000)  # both before the subscriber's group existed: only the API has them
    with _web(suite_redis.url(0)) as url:
        api = {"HMS_API_URL": url, "HMS_API_TOKEN": _token(name=NAME, can_view=True)}
        first_run = subscribers.start("app-1", **api)
        _acknowledged(bus)
        first_run.stop()
        second_run = subscribers.start("app-2", **api)

    assert _deductions(first_run) == ["New deduction = 15000"]
    assert _deductions(second_run) == []
    assert _receipts(bus) == [_applied(in_force, 15000)]


@pytest.mark.usefixtures("demo_committed")
def test_receipts_over_the_api_are_recorded_by_the_web_with_the_token_bound_to_the_subscriber(
    bus, suite_redis, subscribers
):
    from busapp.models import Receipt, Subscriber
    from tests.test_api import _token

    token = _token(name=NAME, can_view=True, subscriber=Subscriber.objects.get(name=NAME))
    with _web(suite_redis.url(0)) as url:
        app = subscribers.start("app-1", HMS_API_URL=url, HMS_API_TOKEN=token, HMS_RECEIPTS_OVER_API="1")
        event = publish_deduction(15000)
        app.wait_for_line("New deduction = 15000")
        _acknowledged(bus)

    receipt = Receipt.objects.get(event__envelope_id=event.envelope_id)
    assert (receipt.subscriber.name, receipt.status, receipt.via) == (NAME, "applied", "api")
    assert receipt.detail == "showing 15000 in the app"
    assert _receipts(bus) == []  # nothing went the stream's way


@pytest.mark.usefixtures("demo_committed")
def test_a_subscriber_reconnects_when_redis_comes_back_and_applies_the_next_event(outage_redis):
    started = Subscribers(outage_redis.url(0))
    try:
        app = started.start("app-1")
        outage_redis.stop()
        app.wait_for_line("Redis error")
        outage_redis.restart()  # empty: the group is created again at the stream's end
        wait_for(lambda: app.count("ready: consumer app-1") == 2, timeout=20, what="the subscriber to rejoin")

        publish_deduction(15000)

        app.wait_for_line("New deduction = 15000")
        assert app.process.poll() is None
    finally:
        started.stop_all()


def test_a_receipt_detail_is_cut_to_4_kib_of_text_the_bus_can_store():
    assert len(detail_fit("é" * 5000).encode()) <= 4096
    assert detail_fit("é" * 5000).endswith("…")
    assert detail_fit("a\x00b\ud800c") == "ab?c"
    assert detail_fit("short") == "short"
