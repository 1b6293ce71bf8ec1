"""The JSON API: service tokens, publish and batch publish, topics, idempotency keys, one error shape, OpenAPI."""

import datetime as dt
import hashlib
import json
import threading

import pytest
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client
from django.utils import timezone

from busapp.actions.tokens import service_token_create, service_token_revoke
from busapp.audit import audit_verify
from busapp.models import AuditEntry, DeadLetter, Event, EventStatus, IdempotencyKey, ServiceToken, Topic
from busapp.publishing import stream_key
from tests.support import wait_for

pytestmark = pytest.mark.usefixtures("demo_committed")

EVENTS = "/api/topics/tax-policy/events/"
BATCH = "/api/topics/tax-policy/events/batch/"
EVENT = {"type": "tax_policy.updated", "payload": {"standard_deduction": 15000}}


def _token(name="refund-feed", topics=("tax-policy",), **rights) -> str:
    """A new token's text, issued by the demo admin."""
    _, text = service_token_create(
        name=name,
        topics=list(Topic.objects.filter(name__in=topics)),
        actor=User.objects.get(username="admin"),
        **rights,
    )
    return text


def _post(path, body, token=None, client=None, **headers):
    """POST a JSON body (a str is sent as it is) with a bearer token."""
    if token is not None:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    content = body if isinstance(body, str | bytes) else json.dumps(body)
    return (client or Client()).post(path, content, content_type="application/json", **headers)


def _get(path, token):
    return Client().get(path, HTTP_AUTHORIZATION=f"Bearer {token}")


def _errors(response, status):
    """The errors of a refusal, after checking its status and that the body is the one shape and nothing else."""
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"errors"}
    assert body["errors"], "a refusal names at least one problem"
    for error in body["errors"]:
        assert set(error) == {"path", "message"}
        assert isinstance(error["path"], str)
        assert error["message"]
    return body["errors"]


# Service tokens


def test_a_new_token_is_shown_once_and_only_its_hash_is_kept_and_its_issue_is_audited():
    token, text = service_token_create(
        name="refund-feed",
        topics=[Topic.objects.get(name="tax-policy")],
        actor=User.objects.get(username="admin"),
    )

    assert text.startswith(f"hms_{token.prefix}_")
    stored = ServiceToken.objects.get()
    assert stored.secret_sha256 == hashlib.sha256(text.encode()).hexdigest()
    secret = text.split("_", 2)[2]
    assert all(secret not in str(value) for value in ServiceToken.objects.values().get().values())
    entry = AuditEntry.objects.get(action="service_token.create")
    assert (entry.actor_name, entry.target) == ("admin", f"service_token:{token.prefix}")
    assert entry.details["topics"] == ["tax-policy"]
    assert secret not in json.dumps(entry.details)
    assert audit_verify().intact


def test_a_service_publishes_with_its_token_and_the_seeds_subscriber_gets_it(refund_service):
    token = _token()

    response = _post(EVENTS, EVENT, token)

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "published"
    assert body["event"]["payload"] == {"standard_deduction": 15000}
    assert body["event"]["id"] == body["id"]
    refund_service.wait_for_line("New deduction = 15000")
    event = Event.objects.get()
    assert (event.envelope_id, event.publisher_name, event.publisher, event.source) == (
        body["id"],
        "service:refund-feed",
        None,
        "api",
    )
    assert AuditEntry.objects.get(action="event.publish").actor_name == "service:refund-feed"


def test_a_token_notes_its_last_use_at_most_once_a_minute():
    token = _token()
    assert _get("/api/topics/", token).status_code == 200
    first = ServiceToken.objects.get().last_used_at
    assert first is not None

    assert _get("/api/topics/", token).status_code == 200
    assert ServiceToken.objects.get().last_used_at == first

    ServiceToken.objects.update(last_used_at=first - dt.timedelta(minutes=2))
    assert _get("/api/topics/", token).status_code == 200
    assert ServiceToken.objects.get().last_used_at > first


def test_a_token_cannot_publish_to_a_topic_outside_its_scope_and_the_refusal_is_audited():
    token = _token(topics=("irs.withholding",))

    errors = _errors(_post(EVENTS, EVENT, token), 403)

    assert "may not publish to topic 'tax-policy'" in errors[0]["message"]
    assert Event.objects.count() == 0
    refusal = AuditEntry.objects.get(action="publish.refused")
    assert (refusal.actor_name, refusal.target) == ("service:refund-feed", "topic:tax-policy")


def test_a_token_without_the_publish_right_cannot_publish():
    token = _token(can_publish=False, can_view=True)

    _errors(_post(EVENTS, EVENT, token), 403)
    assert Event.objects.count() == 0
    assert _get("/api/topics/tax-policy/", token).status_code == 200


def test_a_revoked_token_is_refused_with_401_and_its_revocation_is_audited():
    token = _token()
    prefix = token.split("_")[1]
    service_token_revoke(prefix=prefix, actor=User.objects.get(username="admin"))

    errors = _errors(_post(EVENTS, EVENT, token), 401)

    assert "was revoked" in errors[0]["message"]
    assert AuditEntry.objects.get(action="service_token.revoke").target == f"service_token:{prefix}"
    assert Event.objects.count() == 0


def test_an_expired_token_is_refused_with_401():
    token = _token(expires_at=timezone.now() + dt.timedelta(hours=1))
    ServiceToken.objects.update(expires_at=timezone.now() - dt.timedelta(seconds=1))

    errors = _errors(_post(EVENTS, EVENT, token), 401)

    assert "expired" in errors[0]["message"]


def test_unknown_malformed_or_missing_credentials_get_401_in_the_one_shape():
    real = _token()
    forged = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")

    assert "not recognised" in _errors(_post(EVENTS, EVENT, forged), 401)[0]["message"]
    assert "malformed" in _errors(_post(EVENTS, EVENT, "not-a-token"), 401)[0]["message"]
    missing = _post(EVENTS, EVENT)
    _errors(missing, 401)
    assert missing["WWW-Authenticate"].startswith("Bearer")
    assert Event.objects.count() == 0


# People, with their session


def test_a_person_publishes_with_their_session_and_csrf_is_enforced(bus):
    client = Client(enforce_csrf_checks=True)
    client.force_login(User.objects.get(username="policy"))

    refused = _errors(_post(EVENTS, EVENT, client=client), 403)
    assert "CSRF" in refused[0]["message"]

    client.get("/topics/")  # any page sets the CSRF cookie
    csrf = client.cookies["csrftoken"].value
    response = _post(EVENTS, EVENT, client=client, HTTP_X_CSRFTOKEN=csrf)
    assert response.status_code == 201, response.content
    assert Event.objects.get().publisher_name == "policy"


def test_a_person_without_the_publish_right_is_refused():
    client = Client()
    client.force_login(User.objects.get(username="auditor"))

    errors = _errors(_post(EVENTS, EVENT, client=client), 403)

    assert "you may not publish to topic 'tax-policy'" in errors[0]["message"]
    assert Event.objects.count() == 0
    assert AuditEntry.objects.filter(action="publish.refused", actor_name="auditor").count() == 1


# The one error shape


def test_malformed_json_is_400_and_says_where():
    errors = _errors(_post(EVENTS, '{"type": "tax_policy.updated", "payload": {', _token()), 400)

    assert errors[0]["message"].startswith("the body is not valid JSON: Expecting")
    overflow = '{"type": "tax_policy.updated", "payload": {"standard_deduction": 1e400}}'
    assert "1e400 is too large" in _errors(_post(EVENTS, overflow, _token("other")), 400)[0]["message"]
    assert Event.objects.count() == 0


def test_a_body_missing_its_members_is_400_naming_each():
    errors = _errors(_post(EVENTS, {"payload": []}, _token()), 400)

    assert {error["path"] for error in errors} == {"/type", "/payload"}


def test_an_unknown_topic_or_path_is_404():
    token = _token()

    assert "unknown topic 'nope'" in _errors(_post("/api/topics/nope/events/", EVENT, token), 404)[0]["message"]
    _errors(_get("/api/topics/nope/", token), 404)
    _errors(_get("/api/nothing-here/", token), 404)


def test_a_body_over_64_kib_is_413_before_it_is_parsed():
    oversized = '{"type": "tax_policy.updated", "payload": {"x": "' + "a" * 70_000 + '"}}'

    errors = _errors(_post(EVENTS, oversized, _token()), 413)

    assert "the limit is 65536 bytes" in errors[0]["message"]
    assert Event.objects.count() == 0


def test_a_body_that_is_not_json_is_415():
    response = Client().post(EVENTS, "type=x", content_type="text/plain", HTTP_AUTHORIZATION=f"Bearer {_token()}")

    _errors(response, 415)


def test_a_payload_that_breaks_the_schema_is_422_with_the_fields_path_and_writes_nothing(bus):
    before = AuditEntry.objects.count()
    body = {"type": "tax_policy.updated", "payload": {"standard_deduction": -5}}

    errors = _errors(_post(EVENTS, body, _token()), 422)

    assert errors == [{"path": "/payload/standard_deduction", "message": "must be 0 or more"}]
    assert (Event.objects.count(), DeadLetter.objects.count()) == (0, 0)
    assert AuditEntry.objects.count() == before + 1  # the token's issue, nothing for the refused event
    assert "unknown event type" in _errors(_post(EVENTS, {**body, "type": "nope"}, _token("other")), 422)[0]["message"]


def test_a_sensitive_topic_refuses_api_publishes_with_403():
    token = _token(topics=("irs.withholding",))
    body = {"type": "withholding_table.published", "payload": {}}

    errors = _errors(_post("/api/topics/irs.withholding/events/", body, token), 403)

    assert "sensitive" in errors[0]["message"]
    assert Event.objects.count() == 0


def test_an_idempotency_key_used_for_another_body_is_409(bus):
    token = _token()
    assert _post(EVENTS, EVENT, token, HTTP_IDEMPOTENCY_KEY="k-1").status_code == 201

    other = {"type": "tax_policy.updated", "payload": {"standard_deduction": 1}}
    errors = _errors(_post(EVENTS, other, token, HTTP_IDEMPOTENCY_KEY="k-1"), 409)

    assert errors[0]["path"] == "/headers/Idempotency-Key"
    assert "use a new key" in errors[0]["message"]
    assert Event.objects.count() == 1


# Idempotency keys


def test_the_same_request_with_the_same_key_gets_the_first_answer_and_publishes_once(bus):
    token = _token()

    first = _post(EVENTS, EVENT, token, HTTP_IDEMPOTENCY_KEY="order-42")
    again = _post(EVENTS, EVENT, token, HTTP_IDEMPOTENCY_KEY="order-42")

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert Event.objects.count() == 1
    assert bus.xlen(stream_key("tax-policy")) == 1
    kept = IdempotencyKey.objects.get()
    assert (kept.actor_name, kept.response_status, kept.response_body) == ("service:refund-feed", 201, first.json())


def test_a_key_older_than_its_lifetime_names_a_new_request(bus, time_machine):
    token = _token()
    first = _post(EVENTS, EVENT, token, HTTP_IDEMPOTENCY_KEY="daily-run")
    time_machine.move_to(timezone.now() + IdempotencyKey.LIFETIME + dt.timedelta(minutes=1))

    other = {"type": "tax_policy.updated", "payload": {"standard_deduction": 1}}
    second = _post(EVENTS, other, token, HTTP_IDEMPOTENCY_KEY="daily-run")

    assert first.status_code == second.status_code == 201  # not 409: the old request is forgotten
    assert second.json()["id"] != first.json()["id"]
    assert Event.objects.count() == 2
    assert IdempotencyKey.objects.get().response_body == second.json()


def test_keys_are_per_caller_and_a_refused_request_keeps_no_key(bus):
    first, second = _token("one"), _token("two")
    bad = {"type": "tax_policy.updated", "payload": {"standard_deduction": -1}}

    _errors(_post(EVENTS, bad, first, HTTP_IDEMPOTENCY_KEY="k"), 422)
    assert _post(EVENTS, EVENT, first, HTTP_IDEMPOTENCY_KEY="k").status_code == 201
    assert _post(EVENTS, EVENT, second, HTTP_IDEMPOTENCY_KEY="k").status_code == 201

    assert Event.objects.count() == 2


def test_a_batch_replayed_with_its_key_publishes_nothing_more(bus):
    token = _token()
    body = {"events": [EVENT, EVENT]}

    first = _post(BATCH, body, token, HTTP_IDEMPOTENCY_KEY="batch-1")
    again = _post(BATCH, body, token, HTTP_IDEMPOTENCY_KEY="batch-1")

    assert again.json() == first.json()
    assert Event.objects.count() == 2


# Batches


def test_a_batch_publishes_the_valid_items_and_dead_letters_the_rest_item_by_item(bus):
    dlq = bus.pubsub()
    dlq.subscribe("tax-policy.dlq")
    dlq.get_message(timeout=1)
    body = {
        "events": [
            EVENT,
            {"type": "tax_policy.updated", "payload": {"standard_deduction": -5}},
            {"type": "nope", "payload": {}},
            {"type": "tax_policy.updated", "payload": {"standard_deduction": 1}},
        ]
    }

    response = _post(BATCH, body, _token())

    assert response.status_code == 200, response.content
    answer = response.json()
    assert (answer["published"], answer["pending"], answer["dead_lettered"]) == (2, 0, 2)
    results = answer["results"]
    assert [result["status"] for result in results] == ["published", "dead_lettered", "dead_lettered", "published"]
    assert [result["index"] for result in results] == [0, 1, 2, 3]
    letters = {letter.pk: letter for letter in DeadLetter.objects.all()}
    assert set(letters) == {results[1]["dead_letter"], results[2]["dead_letter"]}
    assert results[1]["errors"] == [{"path": "/payload/standard_deduction", "message": "must be 0 or more"}]
    assert letters[results[1]["dead_letter"]].publisher_name == "service:refund-feed"
    published = Event.objects.filter(status=EventStatus.PUBLISHED)
    assert {event.envelope_id for event in published} == {results[0]["id"], results[3]["id"]}
    assert dlq.get_message(timeout=5)["channel"] == b"tax-policy.dlq"


def test_a_batch_over_1000_events_or_empty_is_400():
    token = _token()

    too_many = _errors(_post(BATCH, {"events": [EVENT] * 1001}, token), 400)
    assert too_many == [{"path": "/events", "message": "a batch holds at most 1000 events: split it"}]
    _errors(_post(BATCH, {"events": []}, token), 400)
    assert "/events/1" in {e["path"] for e in _errors(_post(BATCH, {"events": [EVENT, "x"]}, token), 400)}
    assert Event.objects.count() == 0


def test_a_batch_holding_a_document_sized_payload_is_413_and_writes_nothing():
    big = {"type": "tax_policy.updated", "payload": {"standard_deduction": 15000, "note": "a" * 70_000}}
    errors = _errors(_post(BATCH, {"events": [EVENT, big, EVENT, big]}, _token()), 413)
    assert [error["path"] for error in errors] == ["/events/1/payload", "/events/3/payload"]
    assert "the limit is 65,536 bytes" in errors[0]["message"]
    assert (Event.objects.count(), DeadLetter.objects.count()) == (0, 0)


def test_a_batch_to_a_sensitive_topic_is_403():
    token = _token(topics=("irs.withholding",))

    _errors(_post("/api/topics/irs.withholding/events/batch/", {"events": [EVENT]}, token), 403)


# Redis down


def test_with_redis_down_a_publish_is_accepted_as_pending_with_202(outage_redis):
    token = _token()
    outage_redis.stop()

    response = _post(EVENTS, EVENT, token, HTTP_IDEMPOTENCY_KEY="down-1")

    assert response.status_code == 202, response.content
    assert response.json()["status"] == "pending"
    assert Event.objects.get().status == EventStatus.PENDING
    assert IdempotencyKey.objects.get().response_status == 202
    batch = _post(BATCH, {"events": [EVENT]}, token).json()
    assert (batch["pending"], batch["results"][0]["status"]) == (1, "pending")


# Topics


def test_a_token_lists_only_the_topics_of_its_scope_with_types_and_active_schemas():
    token = _token(can_publish=False, can_view=True)

    response = _get("/api/topics/", token)

    assert response.status_code == 200
    [topic] = response.json()["topics"]
    assert (topic["name"], topic["sensitive"], topic["can_publish"]) == ("tax-policy", False, False)
    [event_type] = topic["event_types"]
    assert event_type["name"] == "tax_policy.updated"
    assert event_type["schema_versions"][0]["version"] == 1
    assert event_type["schema_versions"][0]["schema"]["required"] == ["standard_deduction"]
    assert _get("/api/topics/", _token("publisher-only", can_view=False)).json() == {"topics": []}
    _errors(_get("/api/topics/irs.withholding/", token), 403)


def test_a_person_lists_their_visible_topics_in_a_fixed_number_of_queries(django_assert_max_num_queries):
    client = Client()
    client.force_login(User.objects.get(username="policy"))

    with django_assert_max_num_queries(12):
        response = client.get("/api/topics/")

    names = [topic["name"] for topic in response.json()["topics"]]
    assert names == ["irs.withholding", "tax-policy"]
    assert all(topic["can_publish"] for topic in response.json()["topics"])
    detail = client.get("/api/topics/irs.withholding/").json()
    assert detail["sensitive"] is True


# OpenAPI


def test_the_openapi_document_and_its_docs_page_are_served_without_a_cdn():
    client = Client()
    client.force_login(User.objects.get(username="policy"))

    schema = client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    document = json.loads(schema.content)
    assert "/api/topics/{name}/events/" in document["paths"]
    assert "serviceToken" in document["components"]["securitySchemes"]
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in html
    assert "cdn" not in html.lower()
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200


class _GateWatched(threading.BoundedSemaphore):
    """The batch gate, counting the requests that found it closed and wait their turn."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.waiting = 0
        self._counting = threading.Lock()

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        if super().acquire(blocking=False):
            return True
        with self._counting:
            self.waiting += 1
        return super().acquire(blocking, timeout)

    __enter__ = acquire


def test_batches_beyond_the_concurrency_setting_wait_their_turn(monkeypatch, settings, bus):
    from busapp.api import views

    running, most = [0], [0]
    lock, release = threading.Lock(), threading.Event()
    publish = views.event_publish_batch
    gate = _GateWatched(settings.BUS_BATCH_CONCURRENCY)

    def held_publish(**kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        release.wait(timeout=30)  # held until every other request is seen waiting at the gate
        try:
            return publish(**kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(views, "event_publish_batch", held_publish)
    monkeypatch.setattr(views, "_batch_turns", lambda: gate)
    token = _token()
    body = {"events": [{"type": "tax_policy.updated", "payload": {"standard_deduction": 1}}]}
    answers: list[int] = []

    def post() -> None:
        answers.append(_post(BATCH, body, token).status_code)
        connections.close_all()

    requests = [threading.Thread(target=post) for _ in range(6)]
    for request in requests:
        request.start()
    wait_for(lambda: running[0] == 2 and gate.waiting == 4, timeout=30, what="two batches in, four at the gate")
    release.set()
    for request in requests:
        request.join(timeout=30)

    assert answers == [200] * 6
    assert most[0] == settings.BUS_BATCH_CONCURRENCY == 2  # two at once, not six, not one


def test_a_database_connection_lost_mid_request_is_a_503_asking_for_a_resend_never_a_500(monkeypatch):
    """A terminated session or a failover mid-request: the answer says to send it again, with Retry-After."""
    from django.db import OperationalError

    from busapp.api import views

    def session_terminated(*args, **kwargs):
        raise OperationalError("terminating connection due to administrator command")

    token = _token()
    monkeypatch.setattr(views, "publish_once", session_terminated)

    response = _post(EVENTS, EVENT, token, HTTP_IDEMPOTENCY_KEY="resend-me")

    [error] = _errors(response, 503)
    assert response["Retry-After"] == "1"
    assert "send the request again (with the same Idempotency-Key)" in error["message"]
    assert not Event.objects.exists()
