"""Bulk replay and discard: an honest estimate first, then the worker's capped run, cancel, and a report."""

import asyncio
import datetime as dt
import json
import re
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing.websocket import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from busapp.actions.dead_letters import bulk_action_step
from busapp.errors import FieldError
from busapp.models import AuditEntry, BulkAction, BulkActionStatus, DeadLetter, DeadLetterStatus, Event, Source, Topic
from busapp.publishing import stream_key
from busapp.worker import BusWorker
from hmsadmin.asgi import application

pytestmark = pytest.mark.usefixtures("demo_committed", "bus")

# The cause the three JSON letters share (the fourth, not JSON, named no type).
CAUSE = {
    "cause_type": "tax_policy.updated",
    "cause_path": "/payload/standard_deduction",
    "cause_message": "refused by an older schema",
}


def _letters() -> list[DeadLetter]:
    """Four open dead letters with one first error: two would pass today, one still fails, one is not JSON."""
    topic = Topic.objects.get(name="tax-policy")
    bodies = [
        json.dumps({"type": "tax_policy.updated", "payload": {"standard_deduction": 100}}),
        json.dumps({"type": "tax_policy.updated", "payload": {"standard_deduction": 200}}),
        json.dumps({"type": "tax_policy.updated", "payload": {"standard_deduction": -5}}),
        "not json at all",
    ]
    from busapp.actions.dead_letters import dead_letter_create

    error: list[FieldError] = [{"path": "/payload/standard_deduction", "message": "refused by an older schema"}]
    return [
        dead_letter_create(topic=topic, raw=body, errors=error, source=Source.EXTERNAL, actor="external")
        for body in bodies
    ]


def _client(username: str) -> Client:
    client = Client()
    client.force_login(User.objects.get(username=username))
    return client


def _start(client: Client, kind: str = "replay", **extra: str):
    return client.post("/dlq/bulk/", {"topic": "tax-policy", "kind": kind, "rate_per_second": "50", **extra})


def test_the_estimate_says_how_many_match_and_how_many_pass_the_current_schema():
    _letters()

    response = _client("admin").post("/dlq/bulk/estimate/", {"topic": "tax-policy", "kind": "replay"})

    html = response.content.decode()
    assert response.status_code == 200
    assert "<strong>4</strong> open dead letters match" in html
    assert "<strong>2</strong> pass the current schema" in html
    assert DeadLetter.objects.filter(status=DeadLetterStatus.OPEN).count() == 4  # an estimate changes nothing


def test_a_cause_selects_its_letters_only_and_its_run_takes_them_all(bus):
    letters = _letters()
    admin = _client("admin")

    estimate = admin.post("/dlq/bulk/estimate/", {"topic": "tax-policy", "kind": "replay", **CAUSE})
    response = _start(admin, **CAUSE)

    html = estimate.content.decode()
    assert "<strong>3</strong> open dead letters match the type <code>tax_policy.updated</code>" in html
    assert 'name="cause_message" value="refused by an older schema"' in html  # the start keeps the cause
    action = BulkAction.objects.get()
    assert response["Location"] == f"/dlq/bulk/{action.pk}/"
    assert action.letter_ids == [letter.pk for letter in letters[:3]]


def test_a_bulk_replay_replays_what_passes_skips_the_rest_with_reasons_and_reports_it(bus):
    letters = _letters()

    response = _start(_client("admin"))
    action = BulkAction.objects.get()
    assert response["Location"] == f"/dlq/bulk/{action.pk}/"
    action = bulk_action_step(action_id=action.pk, budget=100)

    assert (action.status, action.handled, action.succeeded, action.skipped) == (BulkActionStatus.DONE, 4, 2, 2)
    outcomes = {line["letter"]: (line["outcome"], line["detail"]) for line in action.report}
    assert outcomes[letters[0].pk][0] == outcomes[letters[1].pk][0] == "replayed"
    assert outcomes[letters[2].pk] == ("skipped", "/payload/standard_deduction: must be 0 or more")
    assert outcomes[letters[3].pk][0] == "skipped"
    assert "no event type and payload" in outcomes[letters[3].pk][1]
    assert sorted(Event.objects.values_list("payload__standard_deduction", flat=True)) == [100, 200]
    assert bus.xlen(stream_key("tax-policy")) == 2
    assert set(
        AuditEntry.objects.filter(action__startswith="dead_letter.bulk_replay").values_list("action", flat=True)
    ) == {
        "dead_letter.bulk_replay.start",
        "dead_letter.bulk_replay.done",
    }
    page = _client("admin").get(f"/dlq/bulk/{action.pk}/").content.decode()
    assert "must be 0 or more" in page


def test_a_cancelled_bulk_action_stops_and_keeps_what_it_did():
    _letters()
    _start(_client("admin"))
    action = bulk_action_step(action_id=BulkAction.objects.get().pk, budget=1)

    cancelled = _client("admin").post(f"/dlq/bulk/{action.pk}/cancel/")
    action = bulk_action_step(action_id=action.pk, budget=100)

    assert cancelled.status_code == 302
    assert (action.status, action.handled) == (BulkActionStatus.CANCELLED, 1)
    assert Event.objects.count() == 1
    assert AuditEntry.objects.filter(action="dead_letter.bulk_replay.cancel", actor_name="admin").exists()


def test_a_bulk_discard_needs_a_reason_and_a_sane_rate():
    _letters()
    admin = _client("admin")

    no_reason = _start(admin, kind="discard")
    no_rate = _start(admin, kind="discard", reason="noise from a test publisher", rate_per_second="0")
    started = _start(admin, kind="discard", reason="noise from a test publisher")
    action = bulk_action_step(action_id=BulkAction.objects.get().pk, budget=100)

    assert no_reason.status_code == no_rate.status_code == 400
    assert "reason: is required: say why" in no_reason.content.decode()
    assert "rate_per_second: must be from 1 to 500" in no_rate.content.decode()
    assert started.status_code == 302
    assert (action.status, action.succeeded) == (BulkActionStatus.DONE, 4)
    assert DeadLetter.objects.filter(status=DeadLetterStatus.DISCARDED).count() == 4


def test_bulk_actions_need_the_manage_right_and_refusals_are_audited():
    _letters()

    response = _client("auditor").post("/dlq/bulk/estimate/", {"topic": "tax-policy", **CAUSE})

    assert response.status_code == 403
    assert AuditEntry.objects.filter(action="manage.refused", actor_name="auditor").exists()
    assert BulkAction.objects.count() == 0


async def _progress_socket(action_id: int, username: str):
    def cookie() -> bytes:
        client = Client()
        client.force_login(User.objects.get(username=username))
        return f"sessionid={client.cookies['sessionid'].value}".encode()

    headers = [(b"host", b"testserver"), (b"origin", b"http://testserver"), (b"cookie", await sync_to_async(cookie)())]
    communicator = WebsocketCommunicator(application, f"/ws/dlq/bulk/{action_id}/", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    return communicator, connected


async def test_the_worker_runs_a_bulk_replay_and_its_progress_arrives_over_the_websocket():
    await sync_to_async(_letters)()
    await sync_to_async(_start)(await sync_to_async(_client)("admin"))
    action = await sync_to_async(BulkAction.objects.get)()
    watcher, allowed = await _progress_socket(action.pk, "auditor")
    assert allowed  # auditors follow it (read-only); only managers may cancel it
    await watcher.disconnect()
    await sync_to_async(User.objects.create_user)("outsider")  # no role, no grant: cannot view tax-policy
    _, allowed = await _progress_socket(action.pk, "outsider")
    assert not allowed

    communicator, connected = await _progress_socket(action.pk, "admin")
    assert connected
    first = await communicator.receive_json_from(timeout=5)
    assert (first["type"], first["status"], first["total"]) == ("progress", "running", 4)
    worker = BusWorker(name="bulk-test-worker")
    running = asyncio.create_task(worker.run())
    try:
        progress = first
        while progress["status"] == "running":
            progress = await communicator.receive_json_from(timeout=10)
    finally:
        worker.stop()
        await asyncio.wait_for(running, timeout=10)
        await communicator.disconnect()

    assert (progress["status"], progress["handled"], progress["succeeded"], progress["skipped"]) == ("done", 4, 2, 2)


def test_metrics_say_how_much_bulk_work_remains():
    _letters()
    _start(_client("admin"))
    bulk_action_step(action_id=BulkAction.objects.get().pk, budget=1)

    text = Client().get("/metrics").content.decode()

    assert "hms_bus_bulk_actions_running 1.0" in text
    assert "hms_bus_bulk_letters_remaining 3.0" in text


def test_a_run_keeps_its_rate_one_a_second_included_and_says_how_long_is_left(time_machine: Any):
    """At 1 a second, 16 letters take 15 seconds after the first, however often the worker steps."""
    topic = Topic.objects.get(name="tax-policy")
    body = json.dumps({"type": "tax_policy.updated", "payload": {"standard_deduction": 1}})
    error: list[FieldError] = [{"path": "/payload/standard_deduction", "message": "refused by an older schema"}]
    from busapp.actions.dead_letters import dead_letter_create

    for _ in range(16):
        dead_letter_create(topic=topic, raw=body, errors=error, source=Source.EXTERNAL, actor="external")
    start = timezone.now()
    time_machine.move_to(start, tick=False)
    response = _start(_client("admin"), kind="discard", reason="a test publisher's noise", rate_per_second="1")
    action_id = BulkAction.objects.get().pk
    assert response.status_code == 302

    handled = []
    for tenth in range(0, 160, 2):  # the worker steps every 200 ms, for 16 seconds
        time_machine.move_to(start + dt.timedelta(seconds=tenth / 10), tick=False)
        action = bulk_action_step(action_id=action_id)
        handled.append((tenth / 10, action.handled, action.seconds_left))

    assert handled[0] == (0.0, 1, 15)  # the first at once, 15 to go at 1 a second
    assert all(count == min(16, 1 + int(second)) for second, count, _ in handled)
    assert handled[-1][1:] == (16, 0)
    assert action.status == BulkActionStatus.DONE


def test_when_no_letter_would_pass_the_estimate_offers_to_discard_not_to_replay():
    topic = Topic.objects.get(name="tax-policy")
    from busapp.actions.dead_letters import dead_letter_create

    for deduction in (-5, -7):
        body = json.dumps({"type": "tax_policy.updated", "payload": {"standard_deduction": deduction}})
        error: list[FieldError] = [{"path": "/payload/standard_deduction", "message": "must be 0 or more"}]
        dead_letter_create(topic=topic, raw=body, errors=error, source=Source.EXTERNAL, actor="external")

    html = _client("admin").post("/dlq/bulk/estimate/", {"topic": "tax-policy", "kind": "replay"}).content.decode()

    assert "Nothing would be replayed: none of these 2 letters pass the current schema" in html
    assert re.search(r'name="kind" value="discard">', html)
    assert re.search(r'<button type="submit" class="primary" id="start">Start: discard 2</button>', html)
    assert "Start: replay" not in html


def test_a_cause_posted_with_a_nul_character_is_an_answer_not_a_server_error():
    _letters()

    response = _client("admin").post(
        "/dlq/bulk/estimate/", {"topic": "tax-policy", "kind": "replay", **CAUSE, "cause_message": "refused\x00"}
    )

    assert response.status_code == 200
    assert "<strong>0</strong> open dead letters match" in response.content.decode()
