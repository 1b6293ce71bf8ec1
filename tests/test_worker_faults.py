"""Nothing on the bus stops the worker: entries handled one by one, what cannot be is dead-lettered, loops restart."""

import asyncio
import json
import uuid

import pytest
from asgiref.sync import sync_to_async

from busapp import worker as worker_module
from busapp.heartbeats import WORKERS_KEY, beats_from_hash
from busapp.models import DeadLetter, Event, EventType, SchemaVersion, Source
from busapp.publishing import TAP_GROUP as GROUP
from busapp.publishing import stream_key
from busapp.worker import BusWorker
from busapp.worker import jobs as worker_jobs
from tests.support import until_in_sync_thread

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("demo_committed", "sync_thread_connection_closed"),
]


def _envelope(payload_json: str = '{"standard_deduction": 1}', *, kind: str = "tax_policy.updated") -> str:
    return f'{{"id":"{uuid.uuid4()}","type":"{kind}","timestamp":1712746800.0,"payload":{payload_json}}}'


@pytest.fixture
async def running_worker(bus):
    worker = BusWorker(name="test-worker", claim_idle_ms=0)
    task = asyncio.create_task(worker.run())
    yield worker
    worker.stop()
    await asyncio.wait_for(task, timeout=10)
    assert not task.cancelled()


def _self_referring_schema() -> None:
    """A topic type whose schema is ``{"$ref": "#"}``, put straight in the database as an old release might have."""
    from busapp.models import Topic

    topic = Topic.objects.get(name="tax-policy")
    kind = EventType.objects.create(topic=topic, name="loop.forever")
    SchemaVersion.objects.create(event_type=kind, version=1, schema={"$ref": "#"})


# Each body, and what its dead letter says, in the order they are sent.
BAD_BODIES = {
    "100,000 nested arrays": (("[" * 100_000 + "]" * 100_000).encode(), "is nested deeper than 64 levels"),
    "UTF-16": (_envelope().encode("utf-16"), "is not UTF-8"),
    "UTF-32": (_envelope().encode("utf-32"), "is not UTF-8"),
    "random bytes": (bytes(range(256)) * 4, "is not UTF-8"),
    "lone surrogate in the payload": (
        _envelope('{"standard_deduction": 1, "note": "\\ud800"}').encode(),
        "holds a lone surrogate",
    ),
    "lone surrogate in a key": (_envelope('{"standard_deduction": 1, "\\udfff": 2}').encode(), "lone surrogate"),
    "NUL in the payload": (
        _envelope('{"standard_deduction": 1, "note": "a\\u0000b"}').encode(),
        "holds a NUL character",
    ),
    "NUL byte in the body": (b'{"id":"\x00"}', "is not valid JSON"),
    "a schema that refers to itself": (_envelope("{}", kind="loop.forever").encode(), "a $ref cycle"),
    "not JSON": (b"<html>nope</html>", "is not valid JSON"),
    "10 MB": (b'{"id":"' + b"x" * 10_000_000 + b'"}', "far over the payload limit"),
}


@pytest.mark.parametrize("how", ["XADD", "PUBLISH"])
async def test_every_malformed_message_is_dead_lettered_and_the_worker_goes_on(bus, running_worker, how):
    await sync_to_async(_self_referring_schema)()
    await until_in_sync_thread(lambda: bus.pubsub_numsub("tax-policy")[0][1] >= 1, what="the worker to listen")
    valid = []
    for body, _ in BAD_BODIES.values():
        if how == "XADD":
            bus.xadd(stream_key("tax-policy"), {"event": body})
        else:
            bus.publish("tax-policy", body)
        valid.append(_envelope(f'{{"standard_deduction": {len(valid)}}}'))
        bus.publish("tax-policy", valid[-1])  # each bad message is followed by a good one

    valid_ids = {json.loads(body)["id"] for body in valid}
    await until_in_sync_thread(
        lambda: valid_ids <= set(Event.objects.filter(source=Source.EXTERNAL).values_list("envelope_id", flat=True)),
        what="every valid event",
        seconds=15,
    )

    letters = await sync_to_async(lambda: list(DeadLetter.objects.order_by("id")))()
    # Every bad body became a dead letter, kept as text, with a reason: nothing was retried for ever.
    assert len(letters) == len(BAD_BODIES), "\n".join(str(letter.errors)[:150] for letter in letters)
    assert {event async for event in _recorded_ids()} == valid_ids
    said = [letter.errors[0]["message"] for letter in letters]
    for (name, (_, expected)), message in zip(BAD_BODIES.items(), said, strict=True):
        assert expected in message, f"{name}: {message}"
    assert all("\x00" not in letter.raw for letter in letters)
    assert not [name for name, state in running_worker.loops.items() if state.errors]  # nothing crashed
    pending = bus.xpending(stream_key("tax-policy"), GROUP)["pending"]
    assert pending == 0  # everything acknowledged


async def _recorded_ids():
    for envelope_id in await sync_to_async(lambda: list(Event.objects.values_list("envelope_id", flat=True)))():
        yield envelope_id


async def test_an_entry_workers_keep_dying_on_is_dead_lettered_unread_after_four_deliveries(bus):
    stream = stream_key("tax-policy")
    bus.xgroup_create(stream, GROUP, id="0", mkstream=True)
    entry_id = bus.xadd(stream, {"event": _envelope()})
    bus.xreadgroup(GROUP, "died-1", {stream: ">"})  # delivered once, never acknowledged
    for consumer in ("died-2", "died-3", "died-4"):
        bus.xclaim(stream, GROUP, consumer, 0, [entry_id])  # each claim a delivery more

    worker = BusWorker(name="survivor", claim_idle_ms=0)
    await worker.tap.refresh_topics()
    await worker.tap.handle(await worker.tap.claim())
    await worker.redis.aclose()

    [letter] = await sync_to_async(lambda: list(DeadLetter.objects.all()))()
    assert "could not be processed: delivered 5 times" in letter.errors[0]["message"]
    assert await sync_to_async(Event.objects.count)() == 0
    assert bus.xpending(stream, GROUP)["pending"] == 0


async def test_an_entry_claimed_once_after_a_worker_died_is_recorded_as_usual(bus):
    stream = stream_key("tax-policy")
    bus.xgroup_create(stream, GROUP, id="0", mkstream=True)
    bus.xadd(stream, {"event": _envelope()})
    bus.xreadgroup(GROUP, "died", {stream: ">"})

    worker = BusWorker(name="survivor", claim_idle_ms=0)
    await worker.tap.refresh_topics()
    await worker.tap.handle(await worker.tap.claim())
    await worker.redis.aclose()

    assert await sync_to_async(Event.objects.count)() == 1
    assert await sync_to_async(DeadLetter.objects.count)() == 0


async def test_a_loop_that_fails_is_logged_counted_in_the_heartbeat_and_started_again(bus, monkeypatch, caplog):
    failures = []
    real_relay = worker_jobs.relay_pending

    def relay_that_fails_twice() -> int:
        if len(failures) < 2:
            failures.append(1)
            raise RuntimeError("a bug of ours")
        return real_relay()

    monkeypatch.setattr(worker_jobs, "relay_pending", relay_that_fails_twice)
    monkeypatch.setattr(worker_module, "RESTART_BACKOFF_SECONDS", 0.05)
    monkeypatch.setattr(worker_module, "HEARTBEAT_EVERY_SECONDS", 0.1)
    worker = BusWorker(name="test-worker")
    task = asyncio.create_task(worker.run())
    try:

        def beat():
            beats = beats_from_hash(bus.hgetall(WORKERS_KEY))
            return beats and beats[0].loops["relay"].errors == 2 and beats[0].loops["relay"].state == "running"

        await until_in_sync_thread(
            beat, what="the heartbeat to show the relay's two failures, and the relay running again"
        )
        assert not task.done()  # the process goes on
        assert worker.loops["tap"].errors == 0
        [heard] = beats_from_hash(bus.hgetall(WORKERS_KEY))
        assert heard.name == "test-worker"
        assert "RuntimeError: a bug of ours" in heard.loops["relay"].last_error
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=10)
    assert "relay loop failed" in caplog.text
    assert "Traceback" in caplog.text or any(record.exc_info for record in caplog.records)


async def test_a_leased_job_runs_in_one_worker_at_a_time_and_in_the_next_once_let_go(bus):
    """The audit check and tidying hold a Redis lease while they run: a second worker skips its turn meanwhile."""
    first, second = BusWorker(name="worker-a"), BusWorker(name="worker-b")
    entered, release = asyncio.Event(), asyncio.Event()
    ran: list[str] = []

    async def long_check() -> str:
        entered.set()
        await release.wait()  # still checking: the lease is held
        ran.append("worker-a")
        return "checked by worker-a"

    async def other_check() -> str:
        ran.append("worker-b")
        return "checked by worker-b"

    holding = asyncio.create_task(first.leased("audit-check", 60, long_check))
    await entered.wait()
    assert await second.leased("audit-check", 60, other_check) is None  # skipped: worker-a holds the lease
    release.set()
    assert await holding == "checked by worker-a"
    assert await second.leased("audit-check", 60, other_check) == "checked by worker-b"  # let go: its turn
    assert ran == ["worker-a", "worker-b"]
    await first.redis.aclose()
    await second.redis.aclose()
