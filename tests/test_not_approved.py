"""Events an outsider puts on the bus while their topic is sensitive: recorded, and marked "not approved" everywhere.

The dashboard's own publishes on a sensitive topic wait for a second person; a seed-style
publisher on the same machine does not ask. The tap records what it hears either way, and
history, the event's record, live traffic and /metrics say that nobody approved it.
"""

import asyncio
import json
import re
import time
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connections
from django.test import Client

from busapp.live import live_item, live_item_read
from busapp.models import Event, Source, Topic
from busapp.publishing import stream_key
from busapp.worker import BusWorker
from tests.support import WITHHOLDING_TABLE, approved_withholding_event, signed_in

pytestmark = pytest.mark.usefixtures("demo_committed")

MARK = re.compile(r'class="status not-approved"[^>]*>not approved<')
SENSITIVE, PLAIN = "irs.withholding", "tax-policy"


def _envelope(topic: str) -> str:
    """A valid event of the topic as a seed-style publisher sends it (the seed's envelope, nothing more)."""
    if topic == SENSITIVE:
        event_type, payload = "withholding_table.published", WITHHOLDING_TABLE
    else:
        event_type, payload = "tax_policy.updated", {"standard_deduction": 15000}
    return json.dumps({"id": str(uuid.uuid4()), "type": event_type, "timestamp": time.time(), "payload": payload})


@pytest.fixture(autouse=True)
async def _close_worker_database_connection():
    """The worker's database work runs in Django's sync thread; close its connection after each test."""
    yield
    await sync_to_async(connections.close_all, thread_sensitive=True)()


@pytest.fixture
async def running_worker(bus):
    """A worker in this event loop, listening to every topic's channel; stopped cleanly after the test."""
    worker = BusWorker(name="not-approved-test-worker")
    task = asyncio.create_task(worker.run())
    deadline = asyncio.get_running_loop().time() + 10
    while any(bus.pubsub_numsub(topic)[0][1] < 1 for topic in (SENSITIVE, PLAIN)):
        assert asyncio.get_running_loop().time() < deadline, "the worker never subscribed to the topics"
        await asyncio.sleep(0.05)
    yield worker
    worker.stop()
    await asyncio.wait_for(task, timeout=10)


async def _live_items(channel: str) -> list[dict]:
    """The items of the next group message the worker fans out to this layer channel."""
    message = await asyncio.wait_for(get_channel_layer().receive(channel), timeout=10)
    return [json.loads(text) for text in message["items"]]


async def _recorded(envelope_id: str) -> Event:
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        event = await sync_to_async(
            lambda: Event.objects.select_related("topic", "event_type").filter(envelope_id=envelope_id).first()
        )()
        if event is not None:
            return event
        assert asyncio.get_running_loop().time() < deadline, f"event {envelope_id} never reached history"
        await asyncio.sleep(0.05)


async def _page(path: str, params: dict[str, str] | None = None):
    """A page as an auditor sees it."""
    return await sync_to_async(lambda: signed_in("auditor").get(path, params or {}))()


def _not_approved_metric(topic: str) -> float:
    text = Client().get("/metrics").content.decode()
    name = f'hms_bus_events_not_approved_total{{topic="{topic}"}}'
    [line] = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.rsplit(" ", 1)[1])


async def _published_outside(bus, topic: str) -> tuple[Event, list[dict]]:
    """PUBLISH an event (heard by the listener), then XADD the same envelope (read from the topic's stream).

    Both copies reach live traffic: the first as the tap records it, the second as an event
    history already holds. Returns the recorded row and the two live items, in order.
    """
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(f"topic.{topic}", channel)
    envelope = _envelope(topic)
    bus.publish(topic, envelope)
    event = await _recorded(json.loads(envelope)["id"])
    first = await _live_items(channel)
    bus.xadd(stream_key(topic), {"event": envelope})
    second = await _live_items(channel)
    await layer.group_discard(f"topic.{topic}", channel)
    return event, first + second


async def test_an_outsiders_event_on_a_sensitive_topic_is_marked_not_approved_everywhere(bus, running_worker):
    before = await sync_to_async(_not_approved_metric)(SENSITIVE)

    event, items = await _published_outside(bus, SENSITIVE)

    assert (event.source, event.status, event.not_approved) == (Source.EXTERNAL, "published", True)
    assert [item["id"] for item in items] == [event.envelope_id] * 2
    assert [item.get("not_approved") for item in items] == [True, True]  # as recorded, and as read again
    record = await _page(f"/events/{event.envelope_id}/")
    assert MARK.search(record.content.decode())
    assert 'id="not-approved"' in record.content.decode()
    history = await _page("/events/", {"topic": SENSITIVE})
    assert event.envelope_id in history.content.decode()
    assert len(MARK.findall(history.content.decode())) == 1
    gap_fill = await _page("/live/events/")
    [filled] = [item for item in gap_fill.json()["events"] if item["id"] == event.envelope_id]
    assert filled["not_approved"] is True
    api = await _page(f"/api/events/{event.envelope_id}/")
    assert api.json()["not_approved"] is True
    assert await sync_to_async(_not_approved_metric)(SENSITIVE) == before + 1


async def test_an_outsiders_event_on_a_plain_topic_is_not_marked(bus, running_worker):
    before = await sync_to_async(_not_approved_metric)(PLAIN)

    event, items = await _published_outside(bus, PLAIN)

    assert (event.source, event.not_approved) == (Source.EXTERNAL, False)
    assert [item.get("not_approved") for item in items] == [None, None]
    record = await _page(f"/events/{event.envelope_id}/")
    assert not MARK.search(record.content.decode())
    history = await _page("/events/", {"topic": PLAIN})
    assert event.envelope_id in history.content.decode()
    assert not MARK.search(history.content.decode())
    assert (await _page(f"/api/events/{event.envelope_id}/")).json()["not_approved"] is False
    assert await sync_to_async(_not_approved_metric)(PLAIN) == before == 0


def test_an_event_approved_by_a_second_person_is_not_marked():
    event = approved_withholding_event()

    assert event.not_approved is False
    assert "not_approved" not in live_item(event)
    assert not MARK.search(signed_in("auditor").get(f"/events/{event.envelope_id}/").content.decode())
    assert _not_approved_metric(SENSITIVE) == 0


def test_the_mark_is_what_the_topic_was_when_the_event_was_recorded(bus):
    """Made sensitive later, a topic's earlier outside events stay unmarked; made plain, marked ones stay marked."""

    async def record(topic: str) -> Event:
        worker = BusWorker(name="mark-test-worker")
        await worker.tap.refresh_topics()
        bus.xadd(stream_key(topic), {"event": _envelope(topic)})
        await worker.tap.handle(await worker.tap.read())
        await worker.redis.aclose()
        return await sync_to_async(Event.objects.select_related("topic").get)(topic__name=topic)

    marked = asyncio.run(record(SENSITIVE))
    Topic.objects.filter(name=SENSITIVE).update(sensitive=False)
    plain = asyncio.run(record(PLAIN))
    Topic.objects.filter(name=PLAIN).update(sensitive=True)

    marked.refresh_from_db()
    plain.refresh_from_db()
    assert (marked.not_approved, plain.not_approved) == (True, False)
    text = Client().get("/metrics").content.decode()
    assert f'hms_bus_events_not_approved_total{{topic="{SENSITIVE}"}} 1.0' in text
    assert f'hms_bus_events_not_approved_total{{topic="{PLAIN}"}} 0.0' in text
    read_again = live_item_read(
        json.loads(marked.envelope), len(marked.envelope), topic=SENSITIVE, source=Source.EXTERNAL, publisher="x"
    )
    assert read_again["not_approved"] is True
