"""A service that was down catches up: the event in force of a type at start-up, then what it missed, in order."""

import json
from urllib.parse import urlencode

import pytest

from busapp.actions.dead_letters import dead_letter_create
from busapp.actions.publishing import event_publish, event_publish_batch
from busapp.actions.registry import event_type_register
from busapp.api.selectors import events_published_after
from busapp.models import Event, EventStatus, Source, Topic
from tests.support import approved_withholding_event, publish_deduction, signed_in
from tests.test_api import _errors, _get, _token

pytestmark = pytest.mark.usefixtures("demo_committed")

LATEST = "/api/topics/tax-policy/types/tax_policy.updated/latest/"
EVENTS = "/api/topics/tax-policy/events/"


def _batch(*deductions: int) -> list[Event]:
    """tax_policy.updated events in one batch: they share one timestamp."""
    items = [{"type": "tax_policy.updated", "payload": {"standard_deduction": amount}} for amount in deductions]
    return event_publish_batch(topic="tax-policy", items=items, actor="service:efile", source=Source.API).events


def _noted(amount: int) -> Event:
    """An event of a second type on tax-policy, tax_policy.noted (made on first use)."""
    topic = Topic.objects.get(name="tax-policy")
    if not topic.event_types.filter(name="tax_policy.noted").exists():
        event_type_register(topic=topic, name="tax_policy.noted", actor="test", schema={"type": "object"})
    return event_publish(
        topic="tax-policy",
        event_type="tax_policy.noted",
        payload={"standard_deduction": amount},
        actor="test",
        source=Source.CLI,
    )


def _catch_up(token: str, **query: object) -> dict:
    """One page of GET /api/topics/tax-policy/events/ with the token."""
    response = _get(f"{EVENTS}?{urlencode(query)}", token)
    assert response.status_code == 200, response.content
    return response.json()


def _deductions(page: dict) -> list[int]:
    return [event["payload"]["standard_deduction"] for event in page["events"]]


# The event in force


def test_a_starting_service_reads_the_newest_published_envelope_exactly_as_subscribers_heard_it(bus):
    token = _token(can_publish=False, can_view=True)
    subscriber = bus.pubsub()
    subscriber.subscribe("tax-policy")
    assert subscriber.get_message(timeout=5)["type"] == "subscribe"
    publish_deduction(14000)
    newest = publish_deduction(15000)
    heard = [subscriber.get_message(timeout=5) for _ in range(2)]
    subscriber.close()

    response = _get(LATEST, token)

    assert response.status_code == 200, response.content
    body = response.json()
    assert heard[-1]["data"] == newest.envelope.encode()
    assert body["event"] == json.loads(heard[-1]["data"])
    assert body["event"]["payload"] == {"standard_deduction": 15000}
    assert (body["id"], body["status"]) == (newest.envelope_id, "published")
    assert body["published_at"] is not None


def test_an_event_accepted_while_redis_is_down_is_not_in_force_until_it_is_on_the_bus(outage_redis):
    publish_deduction(14000)
    outage_redis.stop()
    waiting = publish_deduction(99000)
    assert waiting.status == EventStatus.PENDING

    body = signed_in("auditor").get(LATEST).json()

    assert body["event"]["payload"] == {"standard_deduction": 14000}
    assert Event.objects.filter(status=EventStatus.PUBLISHED).count() == 1


def test_a_dead_letter_or_another_types_or_topics_event_is_never_the_event_in_force():
    publish_deduction(14000)
    _noted(1)
    approved_withholding_event()
    dead_letter_create(
        topic=Topic.objects.get(name="tax-policy"),
        raw=json.dumps({"type": "tax_policy.updated", "payload": {"standard_deduction": -5}}),
        errors=[{"path": "/payload/standard_deduction", "message": "must be 0 or more"}],
        source=Source.CLI,
        actor="cli:test",
    )

    body = signed_in("auditor").get(LATEST).json()

    assert body["event"]["payload"] == {"standard_deduction": 14000}
    assert (body["event"]["type"], body["event"]["topic"]) == ("tax_policy.updated", "tax-policy")


def test_among_events_of_one_timestamp_the_last_accepted_is_in_force():
    events = _batch(1, 2, 3)
    assert len({event.timestamp for event in events}) == 1

    body = signed_in("auditor").get(LATEST).json()

    assert (body["id"], body["event"]["payload"]) == (events[-1].envelope_id, {"standard_deduction": 3})


def test_a_type_nothing_was_published_of_yet_is_404_saying_so():
    errors = _errors(signed_in("auditor").get(LATEST), 404)

    assert errors == [{"path": "/type", "message": "no event of tax_policy.updated has been published yet"}]


def test_an_unknown_topic_or_type_is_404_and_a_topic_the_caller_may_not_view_is_403():
    viewer = _token(can_publish=False, can_view=True)
    publisher = _token(name="publish-only", can_publish=True, can_view=False)
    publish_deduction(14000)
    approved_withholding_event()

    assert "unknown topic 'nope'" in _errors(_get("/api/topics/nope/types/x/latest/", viewer), 404)[0]["message"]
    unknown_type = _errors(_get("/api/topics/tax-policy/types/nope/latest/", viewer), 404)[0]["message"]
    assert "unknown event type 'nope'" in unknown_type
    assert "known: tax_policy.updated" in unknown_type
    outside = _errors(_get("/api/topics/irs.withholding/types/withholding_table.published/latest/", viewer), 403)
    assert "may not view topic 'irs.withholding'" in outside[0]["message"]
    assert "may not view" in _errors(_get(LATEST, publisher), 403)[0]["message"]
    assert _errors(_get(f"{EVENTS}?after=x", publisher), 403)


# Catching up


def test_a_service_down_at_7_gets_exactly_what_it_missed_in_the_order_subscribers_heard_it():
    token = _token(can_publish=False, can_view=True)
    heard_last = publish_deduction(1)
    missed = [publish_deduction(2), *_batch(3, 4, 5), publish_deduction(6)]
    approved_withholding_event()  # another topic's

    page = _catch_up(token, after=heard_last.envelope_id)

    assert page["events"] == [json.loads(event.envelope) for event in missed]
    assert (page["next"], page["more"]) == (missed[-1].envelope_id, False)
    assert _catch_up(token, after=page["next"]) == {"events": [], "next": missed[-1].envelope_id, "more": False}


def test_without_after_the_catch_up_starts_at_the_topics_oldest_event():
    publish_deduction(1)
    publish_deduction(2)

    page = _catch_up(_token(), limit=5)

    assert _deductions(page) == [1, 2]


def test_paging_with_next_walks_every_event_once_across_equal_timestamps():
    _batch(1, 2, 3)
    publish_deduction(4)
    _batch(5, 6, 7, 8, 9)
    expected = list(Event.objects.order_by("timestamp", "id").values_list("envelope_id", flat=True))
    token = _token()

    walked, query, pages = [], {"limit": 2}, 0
    while True:
        page = _catch_up(token, **query)
        pages += 1
        if not page["events"]:
            break
        walked += [event["id"] for event in page["events"]]
        query = {"limit": 2, "after": page["next"]}

    assert walked == expected
    assert len(walked) == 9
    assert pages == 6  # five pages of at most two, then the empty one that says it is caught up


def test_more_says_whether_the_next_page_already_has_events():
    _batch(1, 2, 3, 4)
    token = _token()

    first = _catch_up(token, limit=2)
    second = _catch_up(token, limit=2, after=first["next"])

    assert (_deductions(first), first["more"]) == ([1, 2], True)
    assert (_deductions(second), second["more"]) == ([3, 4], False)


def test_pending_events_are_not_caught_up_on_until_they_are_on_the_bus(outage_redis):
    first = publish_deduction(1)
    outage_redis.stop()
    pending = publish_deduction(2)

    page = _catch_up(_token())

    assert _deductions(page) == [1]
    assert page["next"] == first.envelope_id
    # A pending event's id is still a place on the topic to start from.
    assert _catch_up(_token(name="second"), after=pending.envelope_id)["events"] == []


def test_the_type_filter_keeps_only_that_type_and_an_unknown_type_is_422_naming_it():
    publish_deduction(1)
    _noted(100)
    publish_deduction(2)
    token = _token()

    assert _deductions(_catch_up(token, type="tax_policy.updated")) == [1, 2]
    assert [event["type"] for event in _catch_up(token)["events"]] == [
        "tax_policy.updated",
        "tax_policy.noted",
        "tax_policy.updated",
    ]
    errors = _errors(_get(f"{EVENTS}?type=nope", token), 422)
    assert errors[0]["path"] == "/query/type"
    assert "known: tax_policy.noted, tax_policy.updated" in errors[0]["message"]


def test_an_after_the_topic_never_carried_is_422_naming_after_even_when_another_topic_did():
    token = _token(topics=("tax-policy", "irs.withholding"))
    elsewhere = approved_withholding_event()

    for after in ("no-such-id", elsewhere.envelope_id):
        errors = _errors(_get(f"{EVENTS}?after={after}", token), 422)
        assert [error["path"] for error in errors] == ["/query/after"]
        assert f"topic 'tax-policy' has no event '{after}'" in errors[0]["message"]


@pytest.mark.parametrize(("limit", "rule"), [(0, "greater than or equal to 1"), (501, "less than or equal to 500")])
def test_a_limit_outside_1_to_500_is_400_naming_it(limit, rule):
    errors = _errors(_get(f"{EVENTS}?limit={limit}", _token()), 400)

    assert errors[0]["path"] == "/query/limit"
    assert rule in errors[0]["message"]


def test_the_largest_page_holds_500_events():
    _batch(*range(501))

    page = _catch_up(_token(), limit=500)

    assert (len(page["events"]), page["more"]) == (500, True)
    assert _deductions(_catch_up(_token(name="second"), after=page["next"])) == [500]


@pytest.mark.parametrize("type_name", [None, "tax_policy.updated"])
def test_the_catch_up_reads_a_range_of_an_index_and_never_sorts_the_topic(type_name):
    event = publish_deduction(1)
    rows = events_published_after(topic=event.topic, after=event.envelope_id, type_name=type_name)

    plan = rows[:101].explain()

    assert ("event_type_time" if type_name else "event_topic_time") in plan, plan  # a type's own index if named
    assert "TEMP B-TREE" not in plan.upper(), plan  # SQLite's sort
    assert "Sort" not in plan, plan  # PostgreSQL's
