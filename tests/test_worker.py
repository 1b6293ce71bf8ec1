"""The bus worker: tap (external publishers, crash recovery), relay after an outage, fan-out, clean stop."""

import asyncio
import datetime as dt
import json
import signal
import uuid
from pathlib import Path

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connections

from busapp.actions.publishing import event_build, event_publish_batch
from busapp.models import AuditEntry, DeadLetter, Event, EventStatus, Source
from busapp.publishing import TAP_GROUP as GROUP
from busapp.publishing import stream_key
from busapp.selectors import schema_version_active
from busapp.store import store
from busapp.worker import BusWorker
from tests.support import (
    OutputWatcher,
    manage_background,
    publish_deduction,
    seed_script,
    until_in_sync_thread,
    wait_for,
)

pytestmark = [pytest.mark.usefixtures("demo_committed", "sync_thread_connection_closed")]


def _envelope(deduction=14600, **overrides):
    envelope = {
        "id": str(uuid.uuid4()),
        "type": "tax_policy.updated",
        "timestamp": 1712746800.0,
        "payload": {"standard_deduction": deduction},
    }
    return json.dumps({**envelope, **overrides})


@pytest.fixture
async def running_worker(bus):
    """A worker running in this event loop; stopped (cleanly) after the test."""
    worker = BusWorker(name="test-worker")
    task = asyncio.create_task(worker.run())
    yield worker
    worker.stop()
    await asyncio.wait_for(task, timeout=10)


async def _listening(bus):
    """Wait until a worker is subscribed to tax-policy."""
    deadline = asyncio.get_running_loop().time() + 10
    while bus.pubsub_numsub("tax-policy")[0][1] < 1:
        assert asyncio.get_running_loop().time() < deadline, "the worker never subscribed to tax-policy"
        await asyncio.sleep(0.05)


async def test_a_starting_worker_listens_at_once_not_at_its_next_topic_refresh(bus, monkeypatch):
    """Until it subscribes, what seed-style publishers send is heard by no one it would reach."""
    monkeypatch.setattr("busapp.worker.tap.TOPIC_REFRESH_SECONDS", 3600.0)  # the next refresh never comes
    worker = BusWorker(name="just-started")
    task = asyncio.create_task(worker.run())
    try:
        await _listening(bus)
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=10)


async def test_the_tap_records_the_seeds_own_publisher_once_even_when_it_arrives_twice(
    bus, suite_redis, running_worker
):
    await _listening(bus)

    publisher = seed_script("publisher.py", suite_redis.port)  # the seed chapter's publisher.py, unchanged
    assert publisher.wait(timeout=10) == 0
    await until_in_sync_thread(
        lambda: Event.objects.filter(source=Source.EXTERNAL).exists(), what="the seed's event in history"
    )
    seed_event = await sync_to_async(Event.objects.get)()
    bus.publish("tax-policy", seed_event.envelope)  # a retrying publisher sends the same id again
    bus.xadd(stream_key("tax-policy"), {"event": seed_event.envelope})  # and a durable one too
    # Each path is handled in order: once a later event sent the same way is in history, so is the copy's fate.
    after_publish, after_xadd = _envelope(1), _envelope(2)
    bus.publish("tax-policy", after_publish)
    bus.xadd(stream_key("tax-policy"), {"event": after_xadd})
    markers = {json.loads(after_publish)["id"], json.loads(after_xadd)["id"]}
    await until_in_sync_thread(
        lambda: Event.objects.filter(envelope_id__in=markers).count() == 2, what="the two later events in history"
    )

    events = await sync_to_async(lambda: list(Event.objects.exclude(envelope_id__in=markers)))()
    assert [event.envelope_id for event in events] == [seed_event.envelope_id]
    assert (events[0].status, events[0].payload) == (EventStatus.PUBLISHED, {"standard_deduction": 15000})
    recorded = await sync_to_async(
        lambda: AuditEntry.objects.filter(action="event.record", target=f"event:{seed_event.envelope_id}").count()
    )()
    assert recorded == 1


async def test_the_tap_dead_letters_an_invalid_external_publish_to_the_topics_dlq(bus, running_worker):
    await _listening(bus)
    dlq = bus.pubsub()
    dlq.subscribe("tax-policy.dlq")
    dlq.get_message(timeout=1)

    bus.publish("tax-policy", _envelope(deduction=-1))
    bus.publish("tax-policy", "<html>not json</html>")

    await until_in_sync_thread(lambda: DeadLetter.objects.count() == 2, what="two dead letters")
    letters = await sync_to_async(lambda: list(DeadLetter.objects.order_by("id")))()
    assert letters[0].errors == [{"path": "/payload/standard_deduction", "message": "must be 0 or more"}]
    assert letters[1].raw == "<html>not json</html>"
    assert letters[1].errors[0]["message"].startswith("is not valid JSON")
    messages = [json.loads(dlq.get_message(timeout=2)["data"]) for _ in range(2)]
    assert messages[0]["event"]["payload"] == {"standard_deduction": -1}
    assert messages[1]["event"] == "<html>not json</html>"  # raw, as it arrived
    assert bus.xlen(stream_key("tax-policy.dlq")) == 2
    assert await sync_to_async(Event.objects.count)() == 0


async def _read_one_external_entry(bus):
    """A durable publisher XADDs one event; worker A reads it (now pending for A) and returns both."""
    bus.xadd(stream_key("tax-policy"), {"event": _envelope()})
    first = BusWorker(name="worker-a")
    await first.tap.refresh_topics()
    entries = await first.tap.read()
    assert len(entries) == 1
    return first, entries


async def test_a_worker_killed_after_reading_loses_nothing(bus):
    first, entries = await _read_one_external_entry(bus)
    await first.redis.aclose()  # worker A dies before recording or acknowledging

    second = BusWorker(name="worker-b", claim_idle_ms=0)
    claimed = await second.tap.claim()
    await second.tap.handle(claimed)
    await second.redis.aclose()

    assert [entry.entry_id for entry in claimed] == [entry.entry_id for entry in entries]
    assert await sync_to_async(Event.objects.count)() == 1
    assert bus.xpending(stream_key("tax-policy"), GROUP)["pending"] == 0


async def test_the_tap_leaves_the_published_mark_to_a_sender_that_makes_it(bus):
    """Events read while still pending, then marked by their sender: the tap's later check writes nothing."""
    worker = BusWorker(name="worker-a")
    await worker.tap.refresh_topics()
    outcome = await sync_to_async(event_publish_batch)(
        topic="tax-policy", items=[{"type": "tax_policy.updated", "payload": {"standard_deduction": 1}}], actor="test"
    )
    await worker.tap.handle(await worker.tap.read())
    just_now = asyncio.get_running_loop().time()
    # As if read before the sender's mark, long ago; and one more read just now (not due yet).
    worker.tap.seen_pending = {outcome.events[0].pk: ("1-0", 0.0), 999_999: ("2-0", just_now)}

    assert await worker.tap.settle_seen_pending() == 0
    assert worker.tap.seen_pending == {999_999: ("2-0", just_now)}  # checked again later
    await worker.redis.aclose()
    event = await sync_to_async(Event.objects.get)(pk=outcome.events[0].pk)
    assert event.stream_id != "1-0"  # the sender's own mark stands


async def test_a_worker_killed_after_recording_but_before_acknowledging_does_not_double(bus):
    first, entries = await _read_one_external_entry(bus)
    await first.tap.record(entries)
    await first.redis.aclose()  # worker A dies after its commit, before XACK

    second = BusWorker(name="worker-b", claim_idle_ms=0)
    await second.tap.handle(await second.tap.claim())
    await second.redis.aclose()

    assert await sync_to_async(Event.objects.count)() == 1
    assert await sync_to_async(AuditEntry.objects.filter(action="event.record").count)() == 1
    assert bus.xpending(stream_key("tax-policy"), GROUP)["pending"] == 0


async def test_the_tap_marks_an_event_published_when_its_sender_died_before_saying_so(bus):
    def sent_but_not_marked():
        version = schema_version_active(topic="tax-policy", event_type="tax_policy.updated")
        event = event_build(version=version, payload={"standard_deduction": 1}, actor="test", source=Source.CLI)
        event.save()
        from busapp.publishing import BusMessage, _send

        [(stream_id, _)] = _send([BusMessage("tax-policy", event.envelope, 1000, event.envelope_id)])
        return event, stream_id

    event, stream_id = await sync_to_async(sent_but_not_marked)()
    worker = BusWorker(name="worker-a")
    await worker.tap.refresh_topics()
    outcome = await worker.tap.handle(await worker.tap.read())
    # A live sender marks its events a moment after sending: the tap leaves that to it for a second.
    assert await worker.tap.settle_seen_pending() == 0
    assert (await sync_to_async(Event.objects.get)(pk=event.pk)).status == EventStatus.PENDING
    assert await worker.tap.settle_seen_pending(older_than=0.0) == 1
    await worker.redis.aclose()

    stored = await sync_to_async(Event.objects.get)(pk=event.pk)
    assert (stored.status, stored.stream_id) == (EventStatus.PUBLISHED, stream_id)
    assert outcome.groups["topic.tax-policy"][0]["status"] == "published"  # it is on the bus


@pytest.mark.skipif(not store().tidies, reason="only the SQLite store checkpoints a WAL")
async def test_the_worker_checkpoints_the_wal_so_that_publishers_need_not(bus, running_worker):
    database_file = Path(connections["default"].settings_dict["NAME"])

    def publish_then_look() -> int:
        for deduction in range(150):  # over 1,500 WAL pages: past SQLite's default checkpoint, not ours
            publish_deduction(deduction)
        return database_file.stat().st_mtime_ns

    written_after_publishing = await sync_to_async(publish_then_look)()

    # Writers only append to the WAL; the checkpoint copies its pages into the database file.
    await until_in_sync_thread(
        lambda: database_file.stat().st_mtime_ns > written_after_publishing, what="the worker's checkpoint"
    )


async def test_fan_out_sends_one_group_message_per_topic_per_batch_not_one_per_event(bus, running_worker):
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("topic.tax-policy", channel)
    items = [{"type": "tax_policy.updated", "payload": {"standard_deduction": n}} for n in range(300)]

    outcome = await sync_to_async(event_publish_batch)(topic="tax-policy", items=items, actor="test")

    received, messages = [], 0
    while len(received) < 300:
        message = await asyncio.wait_for(layer.receive(channel), timeout=10)
        assert message["type"] == "bus.events"
        assert message["topic"] == "tax-policy"
        received.extend(json.loads(text) for text in message["items"])
        messages += 1
    assert [item["id"] for item in received] == [event.envelope_id for event in outcome.events]
    assert received[0]["payload"] == {"standard_deduction": 0}
    assert messages <= 3, f"{messages} group messages for 300 events"


def test_the_worker_survives_an_outage_relays_once_and_stops_cleanly_on_sigterm(outage_redis, settings):
    outage_redis.stop()
    event = publish_deduction(15000)
    assert event.status == EventStatus.PENDING
    worker = OutputWatcher(manage_background("bus_worker", redis_url=outage_redis.url()))
    try:
        worker.wait_for_line("bus worker")
        wait_for(lambda: worker.count("Redis unavailable") >= 1, timeout=10, what="the worker to notice the outage")
        assert worker.process.poll() is None  # it waits for Redis instead of dying

        worker.process.send_signal(signal.SIGSTOP)  # hold it while Redis returns and we subscribe
        outage_redis.start()
        subscriber = redis.Redis(port=outage_redis.port).pubsub()
        subscriber.subscribe("tax-policy")
        subscriber.get_message(timeout=1)
        worker.process.send_signal(signal.SIGCONT)

        message = subscriber.get_message(timeout=10)
        while message is not None and message["type"] != "message":
            message = subscriber.get_message(timeout=10)
        assert message is not None, "the relay never published the pending event"
        assert json.loads(message["data"])["id"] == event.envelope_id
        assert subscriber.get_message(timeout=1.5) is None  # exactly once
        wait_for(
            lambda: Event.objects.get(pk=event.pk).status == EventStatus.PUBLISHED,
            timeout=5,
            what="history to show it published",
        )

        worker.process.send_signal(signal.SIGTERM)
        assert worker.process.wait(timeout=15) == 0
    finally:
        worker.stop()
    worker.wait_for_line("bus worker stopped cleanly")
    assert Event.objects.filter(envelope_id=event.envelope_id).count() == 1
    assert DeadLetter.objects.count() == 0
    client = redis.Redis(port=outage_redis.port)
    assert client.xlen(stream_key("tax-policy")) == 1
    assert client.xpending(stream_key("tax-policy"), GROUP)["pending"] == 0  # nothing left half-done


async def test_with_two_workers_both_listen_to_pub_sub_and_each_event_is_copied_once(bus):
    from busapp.publishing import INGEST_STREAM

    workers = [BusWorker(name="worker-a"), BusWorker(name="worker-b")]
    tasks = [asyncio.create_task(worker.run()) for worker in workers]
    try:
        await until_in_sync_thread(lambda: bus.pubsub_numsub("tax-policy")[0][1] == 2, what="both workers to subscribe")

        for deduction in range(20):
            bus.publish("tax-policy", _envelope(deduction))

        await until_in_sync_thread(lambda: Event.objects.count() == 20, what="the external events in history")
        assert bus.xlen(INGEST_STREAM) == 20  # heard twice, copied once
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)


async def test_the_worker_publishes_a_scheduled_event_when_its_time_comes(bus, running_worker):
    from django.contrib.auth.models import User
    from django.utils import timezone

    from busapp.actions.requests import publish_request_create
    from busapp.models import PublishRequest, PublishRequestStatus

    subscriber = bus.pubsub()
    await sync_to_async(subscriber.subscribe)("tax-policy")
    policy = await sync_to_async(User.objects.get)(username="policy")
    waiting = await sync_to_async(publish_request_create)(
        topic="tax-policy",
        event_type="tax_policy.updated",
        payload={"standard_deduction": 15000},
        actor=policy,
        envelope_id=uuid.uuid4(),
        effective_at=timezone.now() + dt.timedelta(seconds=1.5),
    )

    await until_in_sync_thread(
        lambda: PublishRequest.objects.get(pk=waiting.pk).status == PublishRequestStatus.PUBLISHED,
        what="the scheduled publish to go out",
    )
    received = []
    for _ in range(10):  # the message is already there; a few reads at most
        message = await sync_to_async(subscriber.get_message)(ignore_subscribe_messages=True, timeout=1)
        if message:
            received.append(json.loads(message["data"]))
            break
    assert received, "the subscriber heard nothing"
    assert received[0]["id"] == waiting.envelope_id
    assert received[0]["payload"] == {"standard_deduction": 15000}
    subscriber.close()


async def test_a_stopping_worker_records_what_it_read_ahead_and_leaves_nothing_pending(bus, monkeypatch):
    """The tap reads the next batch while it records one: a read that came back is handled before it stops."""
    monkeypatch.setattr("busapp.worker.tap.READ_COUNT", 1)
    for deduction in (1, 2, 3):
        bus.xadd(stream_key("tax-policy"), {"event": _envelope(deduction)})
    worker = BusWorker(name="test-worker")
    handle = worker.tap.handle

    async def handle_then_stop(entries):
        outcome = await handle(entries)
        worker.stop()  # told to stop while the next batch is being read
        return outcome

    monkeypatch.setattr(worker.tap, "handle", handle_then_stop)
    await asyncio.wait_for(worker.run(), timeout=10)

    [group] = [group for group in bus.xinfo_groups(stream_key("tax-policy")) if group["name"].decode() == GROUP]
    recorded = await sync_to_async(Event.objects.filter(source=Source.EXTERNAL).count)()
    assert group["pending"] == 0
    assert group["entries-read"] == recorded == 2  # the first batch, and the one read ahead of the stop
