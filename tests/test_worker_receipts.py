"""The receipts stream: subscribers XADD their receipts, the bus worker records them in bulk and acknowledges them."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async

from busapp.models import AuditEntry, Receipt, ReceiptVia
from busapp.publishing import RECEIPT_FIELD, RECEIPTS_REFUSED_KEY, RECEIPTS_STREAM, TAP_GROUP
from busapp.worker import BusWorker
from tests.support import publish_deduction, until_in_sync_thread

pytestmark = [pytest.mark.usefixtures("demo_committed", "sync_thread_connection_closed")]


@pytest.fixture
async def running_worker(bus: Any) -> Any:
    """A worker running in this event loop; stopped (cleanly) after the test."""
    worker = BusWorker(name="receipts-worker")
    task = asyncio.create_task(worker.run())
    yield worker
    worker.stop()
    await asyncio.wait_for(task, timeout=10)


def _post(bus: Any, body: Any) -> None:
    """A subscriber's receipt on the stream, as ``hms_subscriber`` writes it (or anything else, as a bad one)."""
    bus.xadd(RECEIPTS_STREAM, {RECEIPT_FIELD: body if isinstance(body, str | bytes) else json.dumps(body)})


def _pending(bus: Any) -> int | None:
    """Receipts read by a worker and not yet acknowledged; None before a worker made the group."""
    try:
        return int(bus.xpending(RECEIPTS_STREAM, TAP_GROUP)["pending"])
    except redis.ResponseError:
        return None


async def test_the_worker_records_stream_receipts_acknowledges_them_and_counts_what_it_refuses(
    bus: Any, running_worker: BusWorker
) -> None:
    event = await sync_to_async(publish_deduction)(15000)
    _post(bus, {"event": event.envelope_id, "subscriber": "e-file", "status": "applied"})
    _post(bus, {"event": event.envelope_id, "subscriber": "mobile-tax-app", "status": "rejected", "detail": "cap"})
    _post(bus, "not json")
    _post(bus, {"event": event.envelope_id, "subscriber": "nobody", "status": "applied"})
    _post(bus, {"event": event.envelope_id, "subscriber": "e-file", "status": "ignored"})  # conflicts with the first

    await until_in_sync_thread(lambda: Receipt.objects.count() == 2, what="two receipts recorded")
    await until_in_sync_thread(
        lambda: sum(int(n) for n in bus.hgetall(RECEIPTS_REFUSED_KEY).values()) == 3, what="three refusals counted"
    )

    receipts = await sync_to_async(
        lambda: {r.subscriber.name: (r.status, r.detail, r.via) for r in Receipt.objects.select_related("subscriber")}
    )()
    assert receipts == {
        "e-file": ("applied", "", ReceiptVia.STREAM),
        "mobile-tax-app": ("rejected", "cap", ReceiptVia.STREAM),
    }
    refused = {key.decode(): int(value) for key, value in bus.hgetall(RECEIPTS_REFUSED_KEY).items()}
    assert refused == {"invalid": 1, "unknown_subscriber": 1, "conflict": 1}
    # Done with, so dropped from the stream (Redis keeps acknowledged entries until trimmed).
    await until_in_sync_thread(lambda: bus.xlen(RECEIPTS_STREAM) <= 1, what="the handled receipts trimmed")
    assert _pending(bus) == 0
    entries = await sync_to_async(
        lambda: {(e.actor_name, e.details["subscriber"]) for e in AuditEntry.objects.filter(action="receipt.record")}
    )()
    assert entries == {("system:receipts-stream", "e-file"), ("system:receipts-stream", "mobile-tax-app")}


async def test_a_receipt_that_comes_before_its_event_waits_for_it_and_is_then_recorded(
    bus: Any, running_worker: BusWorker
) -> None:
    envelope_id = uuid.uuid4()
    _post(bus, {"event": str(envelope_id), "subscriber": "e-file", "status": "applied"})
    await until_in_sync_thread(lambda: _pending(bus) == 1, what="the receipt read and held back")

    await sync_to_async(publish_deduction)(15000, envelope_id=envelope_id)

    await until_in_sync_thread(lambda: Receipt.objects.count() == 1, what="the receipt recorded once its event is")
    await until_in_sync_thread(lambda: _pending(bus) == 0, what="the receipt acknowledged")
    assert not bus.exists(RECEIPTS_REFUSED_KEY)


async def test_entries_the_database_would_choke_on_are_refused_and_the_good_ones_beside_them_recorded(
    bus: Any, running_worker: BusWorker
) -> None:
    event = await sync_to_async(publish_deduction)(15000)
    _post(bus, {"event": "a\u0000b", "subscriber": "e-file", "status": "applied"})
    _post(bus, '{"event": "\\ud800", "subscriber": "e-file", "status": "applied"}')
    _post(bus, {"event": event.envelope_id, "subscriber": "e-\u0000file", "status": "applied"})
    _post(bus, {"event": event.envelope_id, "subscriber": "e-file", "status": "applied", "detail": "x\u0000"})
    _post(bus, {"event": event.envelope_id, "subscriber": "e-file", "status": ["applied"]})
    _post(bus, {"event": event.envelope_id, "subscriber": "mobile-tax-app", "status": "applied"})

    await until_in_sync_thread(lambda: Receipt.objects.count() == 1, what="the one good receipt recorded")
    await until_in_sync_thread(lambda: _pending(bus) == 0, what="every entry acknowledged")

    refused = {key.decode(): int(value) for key, value in bus.hgetall(RECEIPTS_REFUSED_KEY).items()}
    assert refused == {"invalid": 5}
