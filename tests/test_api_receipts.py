"""Receipts over the API: a subscriber's token posts them (one, or a batch); whoever may view the topic reads them."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import User
from django.test import Client

from busapp.actions.tokens import service_token_create
from busapp.models import AuditAction, AuditEntry, Event, Receipt, ServiceToken, Subscriber, Topic
from tests.support import approved_withholding_event, publish_deduction, signed_in
from tests.test_api import _errors as api_errors

pytestmark = pytest.mark.usefixtures("demo", "bus")

BATCH = "/api/receipts/"
PUBLISHED_AT = dt.datetime(2027, 1, 1, 7, 0, tzinfo=dt.UTC)


def _receipts_of(event: Event) -> str:
    return f"/api/events/{event.envelope_id}/receipts/"


def _token(subscriber: str | None = "e-file", topics: tuple[str, ...] = ("tax-policy",), **rights: Any) -> str:
    """A new token's text, issued by the demo admin, bound to ``subscriber`` (None: to no subscriber)."""
    _, text = service_token_create(
        name=f"{subscriber or 'unbound'}-feed",
        topics=list(Topic.objects.filter(name__in=topics)),
        actor=User.objects.get(username="admin"),
        subscriber=Subscriber.objects.get(name=subscriber) if subscriber else None,
        **rights,
    )
    return text


def _post(path: str, body: Any, token: str | None = None, client: Client | None = None) -> Any:
    """POST a JSON body (a str is sent as it is), with a bearer token if given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    content = body if isinstance(body, str) else json.dumps(body)
    return (client or Client()).post(path, content, content_type="application/json", headers=headers)


@pytest.fixture
def published(django_capture_on_commit_callbacks: Any) -> Callable[..., Event]:
    """Publish on the bus now (the test's transaction never commits, so its on-commit send is run here)."""

    def publish(make: Callable[[], Event] = lambda: publish_deduction(15000)) -> Event:
        with django_capture_on_commit_callbacks(execute=True):
            event = make()
        event.refresh_from_db()
        return event

    return publish


def _nothing_recorded() -> None:
    assert not Receipt.objects.exists()
    assert not AuditEntry.objects.filter(action__startswith="receipt.").exists()


# One receipt


def test_a_bound_service_records_its_receipt_with_201_and_its_latency_from_the_publish(published: Any) -> None:
    with time_machine.travel(PUBLISHED_AT, tick=False):
        event = published()
    token = _token()

    with time_machine.travel(PUBLISHED_AT + dt.timedelta(seconds=2.5), tick=False):
        response = _post(_receipts_of(event), {"status": "applied", "detail": "15,000 in force"}, token)

    assert response.status_code == 201, response.content
    assert response.json() == {
        "event": event.envelope_id,
        "subscriber": "e-file",
        "status": "applied",
        "detail": "15,000 in force",
        "received_at": "2027-01-01T07:00:02.500000Z",
        "via": "api",
        "latency_seconds": 2.5,
    }
    receipt = Receipt.objects.get()
    assert (receipt.event, receipt.subscriber.name, receipt.via) == (event, "e-file", "api")
    entry = AuditEntry.objects.get(action=AuditAction.RECEIPT_RECORD)
    assert (entry.actor_name, entry.target) == ("service:e-file-feed", f"event:{event.envelope_id}")


def test_the_same_receipt_again_is_answered_200_with_the_first_and_nothing_new_is_recorded(published: Any) -> None:
    event = published()
    token = _token()
    first = _post(_receipts_of(event), {"status": "applied"}, token)

    again = _post(_receipts_of(event), {"status": "applied", "subscriber": "e-file"}, token)

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert Receipt.objects.count() == 1
    assert AuditEntry.objects.filter(action=AuditAction.RECEIPT_RECORD).count() == 1


def test_a_different_second_receipt_is_refused_409_and_the_first_stands(published: Any) -> None:
    event = published()
    token = _token()
    _post(_receipts_of(event), {"status": "applied"}, token)

    errors = api_errors(_post(_receipts_of(event), {"status": "rejected", "detail": "cap exceeded"}, token), 409)

    assert errors[0]["path"] == "/status"
    assert "already said 'applied'" in errors[0]["message"]
    receipt = Receipt.objects.get()
    assert (receipt.status, receipt.detail) == ("applied", "")


def test_a_receipt_of_an_event_not_yet_on_the_bus_has_no_latency() -> None:
    event = publish_deduction(15000)  # never committed: pending, never published

    response = _post(_receipts_of(event), {"status": "ignored"}, _token())

    assert response.status_code == 201, response.content
    assert response.json()["latency_seconds"] is None


BAD_BODIES = [
    pytest.param({"status": "done"}, 400, "/status", "'done' is not one of 'applied'", id="unknown status"),
    pytest.param({"status": 5}, 400, "/status", "is not one of", id="status not a string"),
    pytest.param({"detail": "why"}, 400, "/status", "required", id="no status"),
    pytest.param({"status": None}, 400, "/status", "null", id="null status"),
    pytest.param({"status": "rejected", "detail": "x" * 4097}, 400, "/detail", "4097 bytes", id="detail over 4 KiB"),
    pytest.param({"status": "rejected", "detail": "é" * 2049}, 400, "/detail", "4098 bytes", id="detail in bytes"),
    pytest.param({"status": "rejected", "detail": 5}, 400, "/detail", "must be text", id="detail not text"),
    pytest.param('{"status": "rejected", "detail": "a\\u0000b"}', 400, "/detail", "NUL", id="NUL in detail"),
    pytest.param('{"status": "rejected", "detail": "\\ud800"}', 400, "/detail", "surrogate", id="lone surrogate"),
    pytest.param('{"status": "applied"', 400, "", "not valid JSON", id="malformed JSON"),
    pytest.param("[]", 400, "", "dictionary", id="not an object"),
    pytest.param({"status": "applied", "subscriber": "mobile-tax-app"}, 403, "/subscriber", "e-file only", id="other"),
]


@pytest.mark.parametrize(("body", "status", "path", "words"), BAD_BODIES)
def test_a_bad_receipt_is_refused_in_the_one_error_shape_naming_the_field_and_nothing_is_recorded(
    published: Any, body: Any, status: int, path: str, words: str
) -> None:
    event = published()

    errors = api_errors(_post(_receipts_of(event), body, _token()), status)

    assert errors[0]["path"] == path
    assert words in errors[0]["message"]
    _nothing_recorded()


def test_a_receipt_for_an_unknown_event_is_refused_404() -> None:
    errors = api_errors(_post("/api/events/no-such-event/receipts/", {"status": "applied"}, _token()), 404)

    assert errors == [{"path": "/event", "message": "no event 'no-such-event' in the history"}]
    _nothing_recorded()


def test_a_receipt_for_a_topic_the_subscriber_does_not_follow_is_refused_403(published: Any) -> None:
    event = published(approved_withholding_event)  # e-file follows tax-policy only
    token = _token(topics=("tax-policy", "irs.withholding"))

    errors = api_errors(_post(_receipts_of(event), {"status": "applied"}, token), 403)

    assert errors[0]["path"] == "/event"
    assert "e-file does not follow topic irs.withholding" in errors[0]["message"]
    _nothing_recorded()


def test_a_receipt_for_an_event_outside_the_tokens_topics_is_refused_403(published: Any) -> None:
    event = published(approved_withholding_event)  # withholding-calculator follows it; the token does not name it
    token = _token("withholding-calculator", topics=("tax-policy",))

    errors = api_errors(_post(_receipts_of(event), {"status": "applied"}, token), 403)

    assert errors[0]["path"] == "/event"
    assert "topic irs.withholding, which the caller may not use" in errors[0]["message"]
    _nothing_recorded()


def test_a_token_bound_to_no_subscriber_is_refused_403_and_told_to_get_one_bound(published: Any) -> None:
    event = published()

    errors = api_errors(_post(_receipts_of(event), {"status": "applied"}, _token(None)), 403)

    assert "bound to no subscriber" in errors[0]["message"]
    assert "Subscriber set" in errors[0]["message"]
    _nothing_recorded()
    assert AuditEntry.objects.filter(action=AuditAction.WRITE_REFUSED, target=f"event:{event.envelope_id}").exists()


def test_a_signed_in_person_may_not_post_a_receipt_even_a_bus_admin(published: Any) -> None:
    event = published()

    errors = api_errors(_post(_receipts_of(event), {"status": "applied"}, client=signed_in("admin")), 403)

    assert "receipts are a service's word" in errors[0]["message"]
    _nothing_recorded()


def test_a_receipt_without_credentials_is_refused_401(published: Any) -> None:
    event = published()

    api_errors(_post(_receipts_of(event), {"status": "applied"}), 401)

    _nothing_recorded()


def test_a_receipt_token_needs_no_publish_right(published: Any) -> None:
    event = published()
    token = _token(can_publish=False, can_view=True)

    response = _post(_receipts_of(event), {"status": "applied"}, token)

    assert response.status_code == 201, response.content


# A batch


def test_a_batch_is_recorded_whole_and_answers_each_receipt_in_order(published: Any) -> None:
    events = [published(lambda amount=amount: publish_deduction(amount)) for amount in (15000, 15100, 15200)]
    token = _token()
    _post(_receipts_of(events[1]), {"status": "ignored"}, token)
    body = {
        "receipts": [
            {"event": events[0].envelope_id, "status": "applied"},
            {"event": events[1].envelope_id, "status": "ignored"},
            {"event": events[2].envelope_id, "status": "rejected", "detail": "above our cap"},
        ]
    }

    response = _post(BATCH, body, token)

    assert response.status_code == 200, response.content
    answer = response.json()
    assert [result["created"] for result in answer["results"]] == [True, False, True]
    assert [result["receipt"]["event"] for result in answer["results"]] == [event.envelope_id for event in events]
    assert answer["results"][2]["receipt"]["detail"] == "above our cap"
    assert (answer["created"], answer["repeated"]) == (2, 1)
    assert Receipt.objects.count() == 3
    entry = AuditEntry.objects.get(action=AuditAction.RECEIPT_RECORD_BATCH)
    assert entry.details["events"] == {"applied": [events[0].envelope_id], "rejected": [events[2].envelope_id]}


def test_a_batch_with_one_bad_receipt_records_none_and_names_each_bad_one(published: Any) -> None:
    event = published()
    body = {
        "receipts": [
            {"event": event.envelope_id, "status": "applied"},
            {"event": event.envelope_id, "status": "maybe"},
            {"event": "no-such-event", "status": "applied"},
        ]
    }

    errors = api_errors(_post(BATCH, body, _token()), 400)

    assert [error["path"] for error in errors] == ["/receipts/1/status", "/receipts/2/event"]
    _nothing_recorded()


def test_a_batch_that_contradicts_a_recorded_receipt_is_refused_409_whole(published: Any) -> None:
    first, second = published(), published(lambda: publish_deduction(15100))
    token = _token()
    _post(_receipts_of(first), {"status": "applied"}, token)
    body = {
        "receipts": [
            {"event": second.envelope_id, "status": "applied"},
            {"event": first.envelope_id, "status": "rejected"},
        ]
    }

    errors = api_errors(_post(BATCH, body, token), 409)

    assert errors[0]["path"] == "/receipts/1/status"
    assert list(Receipt.objects.values_list("event", "status")) == [(first.pk, "applied")]


@pytest.mark.parametrize(
    ("receipts", "path", "words"),
    [
        pytest.param([], "/receipts", "at least one", id="empty"),
        pytest.param([{"event": "x", "status": "applied"}] * 1001, "/receipts", "at most 1000", id="over 1,000"),
        pytest.param(["x"], "/receipts/0", "dictionary", id="item not an object"),
        pytest.param([{"status": "applied"}], "/receipts/0/event", "required", id="no event"),
        pytest.param([{"event": 7, "status": "applied"}], "/receipts/0/event", "is required", id="event not a string"),
    ],
)
def test_a_batch_of_the_wrong_shape_is_refused_400_naming_where(receipts: Any, path: str, words: str) -> None:
    errors = api_errors(_post(BATCH, {"receipts": receipts}, _token()), 400)

    assert errors[0]["path"] == path
    assert words in errors[0]["message"]
    _nothing_recorded()


def test_a_batch_naming_another_subscriber_is_refused_403(published: Any) -> None:
    event = published()
    body = {"receipts": [{"event": event.envelope_id, "status": "applied", "subscriber": "mobile-tax-app"}]}

    errors = api_errors(_post(BATCH, body, _token()), 403)

    assert errors[0]["path"] == "/receipts/0/subscriber"
    _nothing_recorded()


def test_a_batch_from_a_person_or_an_unbound_token_is_refused_403(published: Any) -> None:
    event = published()
    body = {"receipts": [{"event": event.envelope_id, "status": "applied"}]}

    api_errors(_post(BATCH, body, client=signed_in("admin")), 403)
    api_errors(_post(BATCH, body, _token(None)), 403)

    _nothing_recorded()


# Reading an event's receipts


def test_whoever_may_view_the_topic_reads_the_events_receipts_by_subscriber(published: Any) -> None:
    event = published()
    _post(_receipts_of(event), {"status": "applied"}, _token("e-file"))
    _post(_receipts_of(event), {"status": "rejected", "detail": "cap"}, _token("analytics-dashboard"))
    viewer = _token(None, can_publish=False, can_view=True)

    as_auditor = signed_in("auditor").get(_receipts_of(event))
    as_service = Client().get(_receipts_of(event), HTTP_AUTHORIZATION=f"Bearer {viewer}")

    assert as_auditor.status_code == 200, as_auditor.content
    assert as_service.json() == as_auditor.json()
    body = as_auditor.json()
    assert body["event"] == event.envelope_id
    assert [(r["subscriber"], r["status"], r["detail"]) for r in body["receipts"]] == [
        ("analytics-dashboard", "rejected", "cap"),
        ("e-file", "applied", ""),
    ]


def test_an_events_receipts_are_hidden_from_a_token_without_its_topic_or_the_view_right(published: Any) -> None:
    event = published()
    elsewhere = _token(None, topics=("irs.withholding",))
    publish_only = _token(None, can_publish=True, can_view=False)

    api_errors(Client().get(_receipts_of(event), HTTP_AUTHORIZATION=f"Bearer {elsewhere}"), 404)
    api_errors(Client().get(_receipts_of(event), HTTP_AUTHORIZATION=f"Bearer {publish_only}"), 403)
    api_errors(signed_in("auditor").get("/api/events/no-such-event/receipts/"), 404)


# Binding a token to a subscriber


def test_a_bus_admin_issues_a_token_bound_to_a_subscriber_and_both_pages_show_it() -> None:
    admin = signed_in("admin")

    response = admin.post(
        "/access/tokens/",
        {"name": "e-file-receipts", "topics": ["tax-policy"], "can_view": "on", "subscriber": "e-file"},
    )

    assert response.status_code == 200, response.content
    token = ServiceToken.objects.get(name="e-file-receipts")
    assert (token.subscriber, token.can_publish) == (Subscriber.objects.get(name="e-file"), False)
    entry = AuditEntry.objects.get(action=AuditAction.SERVICE_TOKEN_CREATE)
    assert entry.details["subscriber"] == "e-file"
    listed = admin.get("/access/tokens/").content.decode()
    assert 'href="/subscribers/#subscriber-e-file">e-file</a>' in listed
    assert f"hms_{token.prefix}_…</span> (e-file-receipts)" in admin.get("/subscribers/").content.decode()


def test_a_token_issued_without_a_subscriber_is_bound_to_none_and_its_audit_entry_says_so() -> None:
    signed_in("admin").post("/access/tokens/", {"name": "refund-feed", "topics": ["tax-policy"], "can_publish": "on"})

    assert ServiceToken.objects.get(name="refund-feed").subscriber is None
    assert AuditEntry.objects.get(action=AuditAction.SERVICE_TOKEN_CREATE).details["subscriber"] is None
