"""event_publish: validate, record outbox and audit in one transaction, one MULTI to Redis on commit."""

import hashlib
import json
import os
import signal

import pytest
import redis
from django.db import DatabaseError
from django.test import Client

from busapp.actions import publishing as publishing_actions
from busapp.actions.publishing import event_publish_batch
from busapp.audit import audit_verify
from busapp.errors import ApprovalRequiredError, EventRejectedError, TopicNotFoundError
from busapp.models import AuditEntry, DeadLetter, Event, EventStatus, Source
from busapp.publishing import envelope_uuid, relay_pending, stream_key
from tests.support import publish_deduction

pytestmark = pytest.mark.usefixtures("demo_committed")


def _publish(payload, **overrides):
    return publish_deduction(None, payload=payload, **overrides)


def test_the_seeds_refund_service_prints_the_new_deduction(refund_service):
    event = _publish({"standard_deduction": 15000})

    refund_service.wait_for_line("New deduction = 15000")
    assert event.status == EventStatus.PUBLISHED


def test_a_published_event_is_in_history_in_the_stream_and_in_the_audit_log(bus):
    event = _publish({"standard_deduction": 15000})

    stored = Event.objects.get(envelope_id=event.envelope_id)
    assert stored.status == EventStatus.PUBLISHED
    assert stored.published_at is not None
    [(entry_id, fields)] = bus.xrange(stream_key("tax-policy"))
    assert entry_id.decode() == stored.stream_id
    envelope = json.loads(fields[b"event"])
    assert envelope == json.loads(stored.envelope)
    assert set(envelope) >= {"id", "type", "timestamp", "payload"}
    assert (envelope["type"], envelope["payload"]) == ("tax_policy.updated", {"standard_deduction": 15000})
    entry = AuditEntry.objects.get(action="event.publish", target=f"event:{event.envelope_id}")
    assert entry.actor_name == "test"
    assert entry.details == {
        "topic": "tax-policy",
        "type": "tax_policy.updated",
        "schema_version": 1,
        "source": "cli",
        "envelope_sha256": hashlib.sha256(stored.envelope.encode()).hexdigest(),
    }
    assert audit_verify().intact


def test_the_stream_is_capped_at_the_topics_retention(bus):
    from busapp.models import Topic

    Topic.objects.filter(name="tax-policy").update(stream_retention=10)
    for deduction in range(400):
        _publish({"standard_deduction": deduction})

    # MAXLEN ~ trims whole radix-tree nodes (100 entries each), so "about 10" is at most a node more.
    assert bus.xlen(stream_key("tax-policy")) <= 110


def test_an_invalid_payload_writes_nothing_and_says_every_error(bus):
    before = AuditEntry.objects.count()

    with pytest.raises(EventRejectedError) as refused:
        _publish({"standard_deduction": "15000", "extra": 1})

    assert refused.value.errors == [{"path": "/payload/standard_deduction", "message": "must be a number"}]
    assert Event.objects.count() == 0
    assert AuditEntry.objects.count() == before
    assert bus.xlen(stream_key("tax-policy")) == 0


def test_an_unknown_topic_and_an_unknown_type_are_named():
    with pytest.raises(TopicNotFoundError, match="unknown topic 'tax-polcy'"):
        _publish({"standard_deduction": 1}, topic="tax-polcy")
    with pytest.raises(EventRejectedError, match=r"/type: unknown event type 'tax_policy\.deleted'.*known: tax_policy"):
        _publish({"standard_deduction": 1}, event_type="tax_policy.deleted")
    assert Event.objects.count() == 0


def test_a_sensitive_topic_needs_a_second_persons_approval(bus):
    payload = {"tax_year": 2025, "effective_date": "2025-01-01", "brackets": [{"up_to": 11000, "rate": 0.1}]}
    withholding = {"topic": "irs.withholding", "event_type": "withholding_table.published"}

    with pytest.raises(ApprovalRequiredError, match="is sensitive: a publish needs a second person's approval"):
        _publish(payload, **withholding)
    with pytest.raises(ApprovalRequiredError, match="nobody may approve their own publish"):
        _publish(payload, approved_by="test", **withholding)
    event = _publish(payload, approved_by="policy2", **withholding)

    assert event.status == EventStatus.PUBLISHED
    assert AuditEntry.objects.get(target=f"event:{event.envelope_id}").details["approved_by"] == "policy2"


def test_when_the_audit_write_fails_the_publish_fails_and_nothing_is_sent(bus, monkeypatch):
    def broken_audit(**kwargs):
        raise DatabaseError("disk full")

    monkeypatch.setattr(publishing_actions, "audit_append", broken_audit)

    with pytest.raises(DatabaseError):
        _publish({"standard_deduction": 15000})
    assert Event.objects.count() == 0
    assert bus.xlen(stream_key("tax-policy")) == 0


def test_a_publish_after_redis_restarted_goes_straight_out_on_a_new_connection(outage_redis):
    assert _publish({"standard_deduction": 1}).status == EventStatus.PUBLISHED  # a send connection now idles
    outage_redis.stop()
    outage_redis.start()  # the idle connection's socket is dead

    event = _publish({"standard_deduction": 2})

    assert event.status == EventStatus.PUBLISHED, event.last_error
    [(_, fields)] = redis.Redis(port=outage_redis.port).xrange(stream_key("tax-policy"))
    assert json.loads(fields[b"event"])["id"] == event.envelope_id  # once


def test_with_redis_down_the_event_is_accepted_as_pending_and_relayed_once_redis_returns(outage_redis):
    outage_redis.stop()

    event = _publish({"standard_deduction": 15000})

    assert event.status == EventStatus.PENDING
    assert "is not reachable" in event.last_error
    stored = Event.objects.get(envelope_id=event.envelope_id)
    assert (stored.status, stored.attempts) == (EventStatus.PENDING, 1)
    assert relay_pending() == 0  # still down: nothing sent, nothing lost

    outage_redis.start()
    client = redis.Redis(port=outage_redis.port)
    subscriber = client.pubsub()
    subscriber.subscribe("tax-policy")
    subscriber.get_message(timeout=1)  # the subscribe confirmation
    Event.objects.filter(pk=stored.pk).update(next_attempt_at=stored.created_at)  # its backoff has passed
    assert relay_pending() == 1
    assert relay_pending() == 0

    message = subscriber.get_message(timeout=2)
    assert json.loads(message["data"])["id"] == event.envelope_id
    assert subscriber.get_message(timeout=0.5) is None  # exactly once
    stored.refresh_from_db()
    assert stored.status == EventStatus.PUBLISHED
    assert AuditEntry.objects.filter(action="event.relay", target=f"event:{event.envelope_id}").count() == 1


def test_a_batch_publishes_valid_items_and_dead_letters_the_rest_in_one_go(bus):
    items = [{"type": "tax_policy.updated", "payload": {"standard_deduction": n}} for n in range(5)]
    items.insert(2, {"type": "tax_policy.updated", "payload": {"standard_deduction": -1}})
    items.append({"type": "nope", "payload": {}})

    outcome = event_publish_batch(topic="tax-policy", items=items, actor="test", source=Source.API)

    assert [type(item).__name__ for item in outcome.items] == ["Event"] * 2 + ["DeadLetter"] + ["Event"] * 3 + [
        "DeadLetter"
    ]
    assert Event.objects.filter(status=EventStatus.PUBLISHED).count() == 5
    on_the_stream = {
        json.loads(fields[b"event"])["id"]: entry_id.decode()
        for entry_id, fields in bus.xrange(stream_key("tax-policy"))
    }
    assert dict(Event.objects.values_list("envelope_id", "stream_id")) == on_the_stream  # each its own entry
    assert bus.xlen(stream_key("tax-policy.dlq")) == 2
    letters = DeadLetter.objects.order_by("id")
    assert letters[0].errors == [{"path": "/payload/standard_deduction", "message": "must be 0 or more"}]
    assert letters[1].errors[0]["path"] == "/type"
    assert all(letter.dlq_stream_id for letter in letters)


def test_a_batch_is_one_audit_entry_naming_every_event_and_vouching_for_their_envelopes(bus):
    items = [{"type": "tax_policy.updated", "payload": {"standard_deduction": n}} for n in range(3)]

    outcome = event_publish_batch(topic="tax-policy", items=items, actor="test", source=Source.API)

    [entry] = AuditEntry.objects.filter(action__startswith="event.publish")
    stored = list(Event.objects.order_by("id"))
    assert (entry.action, entry.target, entry.actor_name) == ("event.publish_batch", "topic:tax-policy", "test")
    assert entry.details["events"] == [event.envelope_id for event in outcome.events]
    assert entry.details["events"] == [event.envelope_id for event in stored]
    assert (
        entry.details["envelopes_sha256"]
        == hashlib.sha256("\n".join(event.envelope for event in stored).encode()).hexdigest()
    )
    assert len({event.timestamp for event in stored}) == 1  # one publish, one instant
    assert len({json.loads(event.envelope)["id"] for event in stored}) == 3
    assert [json.loads(event.envelope)["payload"] for event in stored] == [item["payload"] for item in items]
    assert audit_verify().intact


def test_when_redis_refuses_the_send_the_event_stays_pending_and_the_connection_is_reused(bus):
    bus.set(stream_key("tax-policy"), "not a stream")  # XADD now fails inside the MULTI with WRONGTYPE

    refused = _publish({"standard_deduction": 15000})

    assert refused.status == EventStatus.PENDING
    assert "WRONGTYPE" in refused.last_error
    bus.delete(stream_key("tax-policy"))
    accepted = _publish({"standard_deduction": 16000})  # the same pooled connection, not left half-read
    assert accepted.status == EventStatus.PUBLISHED
    [(_, fields)] = bus.xrange(stream_key("tax-policy"))
    assert json.loads(fields[b"event"])["id"] == accepted.envelope_id
    assert Event.objects.get(envelope_id=refused.envelope_id).status == EventStatus.PENDING


def test_envelope_ids_are_version_7_uuids_rising_with_time_and_never_repeated():
    ids = [envelope_uuid() for _ in range(5000)]  # more than one read of the random buffer

    assert {envelope_id.version for envelope_id in ids} == {7}
    assert len(set(ids)) == len(ids)
    assert [envelope_id.int >> 80 for envelope_id in ids] == sorted(envelope_id.int >> 80 for envelope_id in ids)


def test_a_forked_process_makes_envelope_ids_of_its_own():
    """A forked worker must not draw from its parent's buffer of random bytes: both would make the same ids."""
    envelope_uuid()  # the parent's buffer is filled
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the child: one id down the pipe, then out
        os.write(writer, envelope_uuid().bytes)
        os._exit(0)
    os.close(writer)
    os.waitpid(child, 0)
    childs = os.read(reader, 16)
    os.close(reader)
    parents = envelope_uuid().bytes

    assert childs[6:] != parents[6:]  # the random part (the first 48 bits are the millisecond)


def test_a_batchs_rows_read_back_exactly_as_they_were_built(bus):
    """Quotes, backslashes, braces and non-ASCII text survive the batch INSERT (binary arrays on PostgreSQL)."""
    notes = ['say "hi"', "back\\slash", "{brace,comma}", "naïve — 税", "NULL", ""]
    items = [
        {"type": "tax_policy.updated", "payload": {"standard_deduction": n, "note": note}}
        for n, note in enumerate(notes)
    ]

    outcome = event_publish_batch(topic="tax-policy", items=items, actor="test", source=Source.API)

    fields = ["envelope_id", "payload", "envelope", "timestamp", "source", "publisher_name", "topic_id"]
    stored = {event.envelope_id: event for event in Event.objects.all()}
    for built in outcome.events:
        assert [getattr(stored[built.envelope_id], name) for name in fields] == [
            getattr(built, name) for name in fields
        ]
    assert [stored[event.envelope_id].payload["note"] for event in outcome.events] == notes


def _heard_until(subscriber, last_id: str) -> list[str]:
    """Envelope ids heard on Pub/Sub, in order, up to and with ``last_id`` (published after the rest)."""
    heard: list[str] = []
    while not heard or heard[-1] != last_id:
        message = subscriber.get_message(ignore_subscribe_messages=True, timeout=10)
        assert message is not None, f"{last_id} never heard; heard {heard}"
        heard.append(json.loads(message["data"])["id"])
    return heard


def test_a_send_repeated_after_redis_ran_it_neither_publishes_nor_streams_it_twice(bus):
    from busapp.publishing import BusMessage, _send

    subscriber = bus.pubsub()
    subscriber.subscribe("tax-policy")
    subscriber.get_message(timeout=1)  # the subscribe confirmation
    event = _publish({"standard_deduction": 1})  # sent once by its publisher, reply read

    again = _send([BusMessage("tax-policy", event.envelope, 1000, event.envelope_id)])  # as a relay's resend would
    marker = _publish({"standard_deduction": 2})

    assert again == [(event.stream_id, False)]  # the first send's stream id; not sent this time
    assert _heard_until(subscriber, marker.envelope_id) == [event.envelope_id, marker.envelope_id]
    assert [json.loads(fields[b"event"])["id"] for _, fields in bus.xrange(stream_key("tax-policy"))] == [
        event.envelope_id,
        marker.envelope_id,
    ]


def test_a_mark_written_in_the_last_period_still_stops_a_resend(bus, settings):
    """Marks live in one hash per period (by Redis's clock): a send near a period's start finds the last one's."""
    from busapp.publishing import SENT_MARKS_PREFIX, BusMessage, _send

    period = settings.BUS_SENT_MARK_SECONDS
    last_period = int(bus.time()[0]) // period - 1
    bus.hset(f"{SENT_MARKS_PREFIX}{last_period}", "sent-an-hour-ago", "1700000000000-0")

    again = _send([BusMessage("tax-policy", '{"id":"sent-an-hour-ago"}', 1000, "sent-an-hour-ago")])

    assert again == [("1700000000000-0", False)]
    assert bus.xlen(stream_key("tax-policy")) == 0


def test_a_batch_of_over_a_thousand_messages_holding_one_twice_sends_each_once(bus, settings):
    """Marks are read and written in slices of 1,000 (Lua's unpack limit); a mark twice in one send goes out once."""
    from busapp.publishing import BusMessage, _send

    messages = [BusMessage("tax-policy", f'{{"id":"m{n}"}}', 10_000, f"m{n}") for n in range(2_500)]
    first = _send([*messages, messages[1_700]])
    again = _send(messages[:3])

    assert [sent for _, sent in first] == [True] * 2_500 + [False]
    assert first[-1][0] == first[1_700][0]
    assert again == [(stream_id, False) for stream_id, _ in first[:3]]
    assert bus.xlen(stream_key("tax-policy")) == 2_500
    [hash_key] = bus.keys("hms:sent:*")
    assert bus.hlen(hash_key) == 2_500 + 1  # the marks, and the field that says the hash expires
    assert 0 < bus.ttl(hash_key) <= 2 * settings.BUS_SENT_MARK_SECONDS


def test_an_event_sent_into_a_stalled_redis_is_relayed_without_a_second_copy(outage_redis, settings):
    """Redis stalls (SIGSTOP) mid-send: the publisher times out, Redis runs the send on waking, the relay resends."""
    settings.BUS_RELAY_GRACE_SECONDS = 0
    client = redis.Redis(port=outage_redis.port)
    subscriber = client.pubsub()
    subscriber.subscribe("tax-policy")
    subscriber.get_message(timeout=1)  # the subscribe confirmation
    warm = _publish({"standard_deduction": 0})  # the send connection is open before the stall
    os.kill(outage_redis.process.pid, signal.SIGSTOP)
    try:
        event = _publish({"standard_deduction": 15000})  # waits out the socket timeout: Redis has the command
    finally:
        os.kill(outage_redis.process.pid, signal.SIGCONT)
    assert event.status == EventStatus.PENDING
    assert event.last_error.startswith("outcome unknown")

    Event.objects.filter(pk=event.pk).update(next_attempt_at=event.created_at)  # its backoff has passed
    assert relay_pending() == 1
    marker = _publish({"standard_deduction": 1})

    heard = [warm.envelope_id, event.envelope_id, marker.envelope_id]
    assert _heard_until(subscriber, marker.envelope_id) == heard
    assert len(client.xrange(stream_key("tax-policy"))) == 3
    stored = Event.objects.get(pk=event.pk)
    [_, (stream_id, _), _] = client.xrange(stream_key("tax-policy"))
    assert (stored.status, stored.stream_id) == (EventStatus.PUBLISHED, stream_id.decode())
    assert AuditEntry.objects.filter(action="event.relay", target=f"event:{event.envelope_id}").count() == 1
    assert not stored.maybe_sent_twice  # Redis kept the first send's mark: the relay knew it was there


def test_a_send_whose_outcome_redis_lost_with_its_data_is_resent_and_marked_maybe_sent_twice(outage_redis, settings):
    """Redis stalls with the send unanswered, then dies and comes back empty: nobody can tell if it ran."""
    settings.BUS_RELAY_GRACE_SECONDS = 0
    _publish({"standard_deduction": 0})  # the send connection is open before the stall
    os.kill(outage_redis.process.pid, signal.SIGSTOP)
    event = _publish({"standard_deduction": 15000})  # waits out the socket timeout: outcome unknown
    os.kill(outage_redis.process.pid, signal.SIGKILL)
    outage_redis.process.wait()
    outage_redis.process = None
    outage_redis.start()  # empty: no stream, no marks
    assert event.last_error.startswith("outcome unknown")

    Event.objects.filter(pk=event.pk).update(next_attempt_at=event.created_at)
    assert relay_pending() == 1

    stored = Event.objects.get(pk=event.pk)
    assert (stored.status, stored.maybe_sent_twice) == (EventStatus.PUBLISHED, True)
    relay = AuditEntry.objects.get(action="event.relay", target=f"event:{event.envelope_id}")
    assert relay.details["maybe_sent_twice"] is True
    metrics = Client().get("/metrics").content.decode()
    assert 'hms_bus_events_maybe_sent_twice_total{topic="tax-policy"} 1.0' in metrics


def test_a_send_reaches_a_redis_restarted_empty_that_forgot_the_script(outage_redis):
    outage_redis.stop()
    outage_redis.start()  # no scripts loaded: EVALSHA answers NOSCRIPT, the send loads it

    event = _publish({"standard_deduction": 3})

    assert event.status == EventStatus.PUBLISHED, event.last_error
    assert len(redis.Redis(port=outage_redis.port).xrange(stream_key("tax-policy"))) == 1
