"""The live websockets against the real ASGI app, real Redis and the real database: who may listen, and to what."""

import asyncio
import contextlib
import datetime as dt
import json

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing.websocket import WebsocketCommunicator
from django.contrib.auth.models import User
from django.utils import timezone
from guardian.shortcuts import remove_perm

from busapp.actions.access import grant_create
from busapp.actions.publishing import event_publish_batch
from busapp.consumers import SharedRightsReads
from busapp.live import live_item, live_message
from busapp.models import DeadLetter, Event, Topic
from busapp.worker import BusWorker
from hmsadmin.asgi import application
from tests.support import session_cookie

pytestmark = pytest.mark.usefixtures("demo_committed", "bus")

ORIGIN = (b"origin", b"http://testserver")


async def _connect(path: str = "/ws/traffic/", username: str | None = "policy", origin=ORIGIN):
    headers = [(b"host", b"testserver"), origin] if origin else [(b"host", b"testserver")]
    if username:
        headers.append((b"cookie", await sync_to_async(session_cookie)(username)))
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    return communicator, connected


async def _subscribed(communicator, *topics: str) -> dict:
    await communicator.send_json_to({"action": "subscribe", "topics": list(topics)})
    return await communicator.receive_json_from(timeout=5)


async def _fan_out(topic: str, items: list[dict]) -> None:
    """What the bus worker sends: one group message with a batch of items."""
    await get_channel_layer().group_send(f"topic.{topic}", live_message("bus.events", topic, items))


def _items(topic: str, count: int, start: int = 0) -> list[dict]:
    return [{"topic": topic, "id": f"e{n}", "payload": {"n": n}} for n in range(start, start + count)]


async def test_anonymous_connections_are_refused():
    communicator, connected = await _connect(username=None)

    assert not connected
    await communicator.disconnect()


async def test_connections_from_a_foreign_origin_are_refused():
    communicator, connected = await _connect(origin=(b"origin", b"https://evil.example"))

    assert not connected
    await communicator.disconnect()


async def test_a_subscriber_receives_the_batches_of_its_topic():
    communicator, connected = await _connect()
    assert connected
    assert await _subscribed(communicator, "tax-policy") == {"type": "subscribed", "topics": ["tax-policy"]}

    await _fan_out("tax-policy", _items("tax-policy", 3))

    frame = await communicator.receive_json_from(timeout=5)
    assert (frame["type"], frame["seq"], frame["skipped"]) == ("events", 1, 0)
    assert [item["id"] for item in frame["items"]] == ["e0", "e1", "e2"]
    await communicator.disconnect()


async def test_a_topic_without_view_right_is_refused_and_never_delivered():
    await sync_to_async(User.objects.create_user)("outsider", password="x-unused-42")
    communicator, connected = await _connect(username="outsider")
    assert connected

    refused = await _subscribed(communicator, "tax-policy")
    assert refused == {"type": "error", "message": "you may not view topic 'tax-policy'", "topic": "tax-policy"}
    assert await communicator.receive_json_from(timeout=5) == {"type": "subscribed", "topics": []}
    await _fan_out("tax-policy", _items("tax-policy", 1))
    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()


async def test_bad_messages_get_error_frames_and_the_socket_stays_open():
    communicator, _ = await _connect()

    await communicator.send_to(text_data="{not json")
    not_json = await communicator.receive_json_from(timeout=5)
    await communicator.send_json_to({"action": "subscribe", "topics": ["no-such-topic"]})
    unknown = await communicator.receive_json_from(timeout=5)
    await communicator.receive_json_from(timeout=5)  # the subscription list, still empty
    await communicator.send_json_to({"action": "dance"})
    odd = await communicator.receive_json_from(timeout=5)
    await communicator.send_json_to({"action": "subscribe", "topics": "tax-policy"})
    not_a_list = await communicator.receive_json_from(timeout=5)

    assert not_json["type"] == "error"
    assert not_json["message"].startswith("messages are JSON objects; this is not JSON")
    assert unknown == {"type": "error", "message": "unknown topic 'no-such-topic'", "topic": "no-such-topic"}
    assert odd["type"] == "error"
    assert "unknown message" in odd["message"]
    assert not_a_list == {"type": "error", "message": "subscribe: topics must be a list of topic names"}
    assert await _subscribed(communicator, "tax-policy") == {"type": "subscribed", "topics": ["tax-policy"]}
    await communicator.disconnect()


async def test_a_revoked_right_stops_delivery_within_five_seconds():
    communicator, _ = await _connect()
    await _subscribed(communicator, "tax-policy")

    def revoke() -> None:
        policy = User.objects.get(username="policy")
        remove_perm("busapp.view_topic", policy, Topic.objects.get(name="tax-policy"))

    await sync_to_async(revoke)()

    assert await communicator.receive_json_from(timeout=5) == {"type": "revoked", "topic": "tax-policy"}
    await _fan_out("tax-policy", _items("tax-policy", 1))
    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()


async def test_a_grant_that_expires_stops_delivery_without_anyone_revoking_it():
    """A view right given until a moment in the near future: at that moment the topic stops, no sweep needed."""

    def lend_view() -> None:
        topic = Topic.objects.create(name="payroll.rates")
        grant_create(
            principal=User.objects.get(username="auditor"),
            topics=[topic],
            rights=["view_topic"],
            reason="one look",
            actor="cli:test",
            expires_at=timezone.now() + dt.timedelta(seconds=3),  # time enough to connect and subscribe
        )

    await sync_to_async(lend_view)()
    auditor_without_role = await sync_to_async(_without_role_view)("auditor")
    communicator, _ = await _connect(username=auditor_without_role)
    assert await _subscribed(communicator, "payroll.rates") == {"type": "subscribed", "topics": ["payroll.rates"]}
    # Expiry in at most 3 s, and rights are read again every 2 s.
    assert await communicator.receive_json_from(timeout=8) == {"type": "revoked", "topic": "payroll.rates"}
    await _fan_out("payroll.rates", _items("payroll.rates", 1))
    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()


def _without_role_view(username: str) -> str:
    """Take the person out of their role (whose view right reaches every topic), so only grants count."""
    User.objects.get(username=username).groups.clear()
    return username


async def test_a_client_that_does_not_keep_up_loses_the_oldest_and_is_told_how_many():
    communicator, _ = await _connect()
    await _subscribed(communicator, "tax-policy")

    for n in range(4):  # the window: four frames may wait for their acknowledgement
        await _fan_out("tax-policy", _items("tax-policy", 1, start=n))
        await communicator.receive_json_from(timeout=5)
    await _fan_out("tax-policy", _items("tax-policy", 1500, start=100))  # arrives while the client is behind
    assert await communicator.receive_nothing(timeout=0.5)

    await communicator.send_json_to({"action": "ack", "seq": 4})
    frame = await communicator.receive_json_from(timeout=5)

    assert (frame["seq"], frame["skipped"]) == (5, 500)  # 1,500 arrived, 1,000 kept: the oldest 500 went
    assert frame["items"][0]["id"] == "e600"
    assert len(frame["items"]) == 200
    await communicator.disconnect()


async def test_events_published_in_a_batch_reach_the_browser_in_a_few_frames():
    communicator, _ = await _connect()
    await _subscribed(communicator, "tax-policy")
    worker = BusWorker(name="consumer-test-worker")
    running = asyncio.create_task(worker.run())
    try:
        await worker.tap.refresh_topics()
        items = [{"type": "tax_policy.updated", "payload": {"standard_deduction": n}} for n in range(300)]
        outcome = await sync_to_async(event_publish_batch)(topic="tax-policy", items=items, actor="test")

        received, frames = [], 0
        while len(received) < 300:
            frame = await communicator.receive_json_from(timeout=10)
            received.extend(frame["items"])
            frames += 1
            await communicator.send_json_to({"action": "ack", "seq": frame["seq"]})
    finally:
        worker.stop()
        await asyncio.wait_for(running, timeout=10)
        await communicator.disconnect()

    assert [item["id"] for item in received] == [event.envelope_id for event in outcome.events]
    assert received[0]["payload"] == {"standard_deduction": 0}
    # The same shape the page's gap-fill reads from history, status and publisher included.
    first = await sync_to_async(Event.objects.select_related("topic", "event_type").get)(pk=outcome.events[0].pk)
    assert received[0] == json.loads(json.dumps(live_item(first)))
    assert (received[0]["status"], received[0]["publisher"], received[0]["source"]) == ("published", "test", "api")
    assert frames <= 6, f"{frames} frames for 300 events"


async def test_connected_clients_are_counted_for_metrics():
    from busapp.metrics import registry

    def clients() -> float:
        return registry.get_sample_value("hms_bus_websocket_clients", {"feed": "events"}) or 0.0

    before = clients()
    communicator, _ = await _connect()
    during = clients()
    await communicator.disconnect()

    assert (during - before, clients() - before) == (1, 0)


async def test_an_idle_page_stays_connected_past_the_redis_read_timeout():
    communicator, _ = await _connect()
    await _subscribed(communicator, "tax-policy")

    assert await communicator.receive_nothing(timeout=6.5)  # nothing happens on the bus for a while
    await _fan_out("tax-policy", _items("tax-policy", 1))

    frame = await communicator.receive_json_from(timeout=5)
    assert frame["items"][0]["id"] == "e0"
    await communicator.disconnect()


async def test_many_sockets_of_one_person_share_one_rights_read_a_second(monkeypatch: pytest.MonkeyPatch):
    """Fifty tabs of one browser re-reading rights every 2 s cost one read, not fifty; a second later it is fresh."""
    reads: list[int] = []

    async def counted(user_id: int, session_key: str | None) -> tuple[bool, set[str]]:
        reads.append(user_id)
        await asyncio.sleep(0.01)
        return True, {"tax-policy"}

    monkeypatch.setattr("busapp.consumers._rights", counted)
    clock = [100.0]
    shared = SharedRightsReads(clock=lambda: clock[0])
    answers = await asyncio.gather(*(shared.get(7, "tab-session") for _ in range(50)), shared.get(8, "other"))
    assert reads == [7, 8]
    assert all(answer == (True, {"tax-policy"}) for answer in answers)
    answers[0][1].add("mutated")  # one socket's copy is its own
    assert (await shared.get(7, "tab-session"))[1] == {"tax-policy"}
    clock[0] += SharedRightsReads.FRESH_SECONDS + 0.05
    await shared.get(7, "tab-session")
    assert reads == [7, 8, 7]


async def test_every_socket_of_a_topic_gets_each_batch_once():
    """Twenty pages of one topic in one process: each gets each batch, in order, once."""
    pages = [(await _connect())[0] for _ in range(20)]
    for page in pages:
        await _subscribed(page, "tax-policy")

    await _fan_out("tax-policy", _items("tax-policy", 2))
    await _fan_out("tax-policy", _items("tax-policy", 2, start=2))

    for page in pages:
        first = await page.receive_json_from(timeout=5)
        await page.send_json_to({"action": "ack", "seq": first["seq"]})
        ids = [item["id"] for item in first["items"]]
        if len(ids) < 4:  # the second batch may have come in its own frame
            ids += [item["id"] for item in (await page.receive_json_from(timeout=5))["items"]]
        assert ids == ["e0", "e1", "e2", "e3"]
        assert await page.receive_nothing(timeout=0.05)
    for page in pages:
        await page.disconnect()


async def test_live_pages_hear_the_bus_again_after_the_layer_redis_restarts(settings, outage_redis):
    """Redis restarted (it keeps nothing): open pages are subscribed again and receive without reconnecting."""
    layer = settings.CHANNEL_LAYERS["default"]
    settings.CHANNEL_LAYERS = {
        "default": {**layer, "CONFIG": {**layer["CONFIG"], "hosts": [{"address": outage_redis.url(1)}]}}
    }
    communicator, _ = await _connect()
    await _subscribed(communicator, "tax-policy")
    await _fan_out("tax-policy", _items("tax-policy", 1))
    assert (await communicator.receive_json_from(timeout=5))["items"][0]["id"] == "e0"

    await sync_to_async(outage_redis.stop)()
    await sync_to_async(outage_redis.start)()

    # Sent until heard: a message sent before the page's process has subscribed again is lost,
    # as any message is while Redis is away (history has the events; the page fills gaps from it).
    frame = None
    for attempt in range(100):
        with contextlib.suppress(redis.ConnectionError):  # the sender's own stale connection, as in FanOut
            await _fan_out("tax-policy", _items("tax-policy", 1, start=attempt + 1))
        if not await communicator.receive_nothing(timeout=0.1):
            frame = await communicator.receive_json_from(timeout=1)
            break
    assert frame is not None, "the page never heard the bus again"
    assert frame["type"] == "events"
    await communicator.disconnect()


async def _letters_heard(communicator, count: int) -> list[dict]:
    heard: list[dict] = []
    while len(heard) < count:
        frame = await communicator.receive_json_from(timeout=10)
        heard.extend(frame["items"])
        await communicator.send_json_to({"action": "ack", "seq": frame["seq"]})
    return heard


@pytest.mark.usefixtures("sync_thread_connection_closed")
async def test_dead_letters_reach_live_traffic_and_the_dead_letter_page_from_every_path(bus):
    traffic, _ = await _connect()
    await _subscribed(traffic, "tax-policy")
    letters_page, _ = await _connect("/ws/dlq/")
    await _subscribed(letters_page, "tax-policy")
    worker = BusWorker(name="consumer-letters-worker")
    running = asyncio.create_task(worker.run())
    try:
        await worker.tap.refresh_topics()
        items = [
            {"type": "tax_policy.updated", "payload": {"standard_deduction": -5}},
            {"type": "tax_policy.updated", "payload": {"standard_deduction": 15000}},
        ]
        outcome = await sync_to_async(event_publish_batch)(topic="tax-policy", items=items, actor="test")
        bus.publish("tax-policy", "<html>not json</html>")  # an external publisher's, read by the tap
        traffic_items = await _letters_heard(traffic, 3)
        page_items = await _letters_heard(letters_page, 2)
    finally:
        worker.stop()
        await asyncio.wait_for(running, timeout=10)
        await traffic.disconnect()
        await letters_page.disconnect()

    letters = await sync_to_async(lambda: list(DeadLetter.objects.order_by("id")))()
    dead = [item for item in traffic_items if item["status"] == "dead-lettered"]
    assert [item["id"] for item in traffic_items if "letter" not in item] == [outcome.events[0].envelope_id]
    assert [item["letter"] for item in dead] == [letter.pk for letter in letters]
    assert dead[0]["cause"] == "/payload/standard_deduction: must be 0 or more"
    assert (dead[0]["type"], dead[0]["source"], dead[0]["publisher"]) == ("tax_policy.updated", "api", "test")
    assert dead[1]["text"] == "<html>not json</html>"  # shown as the text that arrived
    assert (dead[1]["source"], dead[1]["type"]) == ("external", "")
    assert [item["letter"] for item in page_items] == [letter.pk for letter in letters]
    assert page_items[0]["errors"] == [{"path": "/payload/standard_deduction", "message": "must be 0 or more"}]


async def test_the_subscribers_feed_shows_a_receipt_as_soon_as_it_is_recorded():
    from busapp.actions.receipts import ReceiptIn, receipt_record
    from busapp.models import ReceiptVia
    from tests.support import publish_deduction

    event = await sync_to_async(publish_deduction)(15000)
    communicator, connected = await _connect("/ws/subscribers/", "auditor")
    assert connected
    assert await _subscribed(communicator, "tax-policy") == {"type": "subscribed", "topics": ["tax-policy"]}

    receipt = ReceiptIn("e-file", event.envelope_id, "rejected", "<b>cap</b>", timezone.now(), ReceiptVia.API)
    await sync_to_async(receipt_record)(receipt, actor="service:e-file")

    frame = await communicator.receive_json_from(timeout=5)
    assert frame["type"] == "subscribers"
    [item] = frame["items"]
    assert (item["kind"], item["event"], item["subscriber"]) == ("receipt", event.envelope_id, "e-file")
    assert (item["status"], item["detail"]) == ("rejected", "<b>cap</b>")  # as sent: the page shows it as text
    await communicator.disconnect()
