"""Four-eyes on sensitive topics and scheduled publishes: nothing goes out before its approval and its time."""

import datetime as dt
import re

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from busapp.actions.requests import publish_requests_due
from busapp.models import AuditEntry, Event, EventStatus, PublishRequest, PublishRequestStatus, SchemaVersion
from busapp.publishing import stream_key

pytestmark = pytest.mark.usefixtures("demo_committed")

WITHHOLDING = {
    "type": "withholding_table.published",
    "/payload/tax_year": "2027",
    "/payload/effective_date": "2027-01-01",
    "/payload/brackets/0/up_to": "11000",
    "/payload/brackets/0/rate": "0.1",
}


def _client(username: str) -> Client:
    client = Client()
    client.force_login(User.objects.get(username=username))
    return client


def _confirm(client: Client, topic: str, form: dict[str, str]):
    """Preview the form and confirm it; the confirm's response."""
    preview = client.post(f"/topics/{topic}/publish/", form)
    assert preview.status_code == 200, preview.content.decode()[:2000]
    found = re.search(r'name="token" value="([^"]+)"', preview.content.decode())
    assert found, "the preview carries no token"
    return client.post(f"/topics/{topic}/publish/confirm/", {"token": found.group(1)})


def _request_by_policy() -> PublishRequest:
    response = _confirm(_client("policy"), "irs.withholding", WITHHOLDING)
    waiting = PublishRequest.objects.get()
    assert response["Location"] == f"/topics/irs.withholding/requests/{waiting.pk}/"
    return waiting


def _decide(username: str, waiting: PublishRequest, decision: str, reason: str = "checked against the IRS table"):
    return _client(username).post(
        f"/topics/irs.withholding/requests/{waiting.pk}/decide/", {"decision": decision, "reason": reason}
    )


def test_a_publish_to_a_sensitive_topic_waits_for_a_second_person(bus):
    waiting = _request_by_policy()

    assert waiting.status == PublishRequestStatus.AWAITING_APPROVAL
    assert (waiting.requested_by.username, waiting.needs_approval) == ("policy", True)
    assert Event.objects.count() == 0
    assert bus.xlen(stream_key("irs.withholding")) == 0
    assert AuditEntry.objects.filter(action="publish_request.create", target=f"publish_request:{waiting.pk}").exists()
    page = _client("policy").get(waiting.get_absolute_url()).content.decode()
    assert "You cannot approve your own request" in page
    assert 'id="approve"' not in page


def test_the_approver_sees_it_on_the_dashboard_and_approving_publishes_it_once(bus):
    waiting = _request_by_policy()
    dashboard = _client("policy2").get("/").content.decode()
    assert "Waiting for your approval" in dashboard
    assert waiting.get_absolute_url() in dashboard
    assert "Waiting for your approval" not in _client("policy").get("/").content.decode()  # not their own

    response = _decide("policy2", waiting, "approve")

    waiting.refresh_from_db()
    event = Event.objects.get()
    assert response.status_code == 302
    assert (waiting.status, waiting.decided_by.username, waiting.event) == (
        PublishRequestStatus.PUBLISHED,
        "policy2",
        event,
    )
    assert (event.envelope_id, event.status, event.publisher_name) == (
        waiting.envelope_id,
        EventStatus.PUBLISHED,
        "policy",
    )
    assert bus.xlen(stream_key("irs.withholding")) == 1
    publish_entry = AuditEntry.objects.get(action="event.publish")
    assert publish_entry.details["approved_by"] == "policy2"
    approve_entry = AuditEntry.objects.get(action="publish_request.approve")
    assert (approve_entry.actor_name, approve_entry.details["reason"]) == ("policy2", "checked against the IRS table")
    assert _decide("admin", waiting, "approve").status_code == 400  # decided once, published once
    assert Event.objects.count() == 1


def test_nobody_approves_their_own_request():
    waiting = _request_by_policy()

    response = _decide("policy", waiting, "approve")

    assert response.status_code == 403
    assert "nobody may approve or reject their own request" in response.content.decode()
    refusal = AuditEntry.objects.get(action="approval.refused")
    assert (refusal.actor_name, refusal.target) == ("policy", f"publish_request:{waiting.pk}")
    waiting.refresh_from_db()
    assert waiting.status == PublishRequestStatus.AWAITING_APPROVAL
    assert Event.objects.count() == 0


def test_a_rejection_needs_a_reason_and_publishes_nothing(bus):
    waiting = _request_by_policy()

    without_reason = _decide("policy2", waiting, "reject", reason="  ")
    rejected = _decide("policy2", waiting, "reject", reason="the 2027 table is not final")
    approve_after = _decide("admin", waiting, "approve")

    assert without_reason.status_code == 400
    assert "is required: say why, for the audit log" in without_reason.content.decode()
    assert rejected.status_code == 302
    assert approve_after.status_code == 400
    assert "already rejected" in approve_after.content.decode()
    waiting.refresh_from_db()
    assert (waiting.status, waiting.decision_reason) == (PublishRequestStatus.REJECTED, "the 2027 table is not final")
    assert Event.objects.count() == 0
    assert bus.xlen(stream_key("irs.withholding")) == 0
    assert AuditEntry.objects.filter(action="publish_request.reject", actor_name="policy2").exists()


def test_people_without_the_approve_right_get_403_and_the_attempt_is_audited():
    waiting = _request_by_policy()

    response = _decide("auditor", waiting, "approve")

    assert response.status_code == 403
    assert AuditEntry.objects.filter(action="approval.refused", actor_name="auditor").exists()
    waiting.refresh_from_db()
    assert waiting.status == PublishRequestStatus.AWAITING_APPROVAL


def _in(minutes: int) -> str:
    """A datetime-local value (UTC) this many minutes from now."""
    return (timezone.now() + dt.timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M")


def test_a_scheduled_publish_goes_out_at_its_time_not_before(bus):
    client = _client("policy")
    response = _confirm(
        client,
        "tax-policy",
        {"type": "tax_policy.updated", "/payload/standard_deduction": "15000", "effective_at": _in(10)},
    )
    waiting = PublishRequest.objects.get()
    assert response["Location"] == waiting.get_absolute_url()
    assert waiting.status == PublishRequestStatus.SCHEDULED
    assert "Scheduled and awaiting approval" in client.get("/").content.decode()

    assert publish_requests_due() == 0  # not yet
    assert bus.xlen(stream_key("tax-policy")) == 0
    assert publish_requests_due(now=timezone.now() + dt.timedelta(minutes=11)) == 1

    waiting.refresh_from_db()
    assert waiting.status == PublishRequestStatus.PUBLISHED
    assert Event.objects.get().envelope_id == waiting.envelope_id
    assert bus.xlen(stream_key("tax-policy")) == 1


def test_a_scheduled_publish_cancelled_in_time_never_goes_out(bus):
    _confirm(
        _client("policy"),
        "tax-policy",
        {"type": "tax_policy.updated", "/payload/standard_deduction": "15000", "effective_at": _in(10)},
    )
    waiting = PublishRequest.objects.get()

    cancelled = _client("policy").post(
        f"/topics/tax-policy/requests/{waiting.pk}/cancel/", {"reason": "the date was wrong"}
    )

    assert cancelled.status_code == 302
    assert publish_requests_due(now=timezone.now() + dt.timedelta(minutes=11)) == 0
    waiting.refresh_from_db()
    assert waiting.status == PublishRequestStatus.CANCELLED
    assert bus.xlen(stream_key("tax-policy")) == 0
    assert AuditEntry.objects.filter(action="publish_request.cancel", actor_name="policy").exists()


def test_a_time_in_the_past_is_refused_next_to_the_field():
    response = _client("policy").post(
        "/topics/tax-policy/publish/",
        {"type": "tax_policy.updated", "/payload/standard_deduction": "15000", "effective_at": _in(-5)},
    )

    assert response.status_code == 400
    assert re.search(r'id="effective_at-error" role="alert">is in the past', response.content.decode())


def test_an_approved_publish_with_a_time_waits_for_the_time(bus):
    _confirm(_client("policy"), "irs.withholding", {**WITHHOLDING, "effective_at": _in(30)})
    waiting = PublishRequest.objects.get()

    _decide("policy2", waiting, "approve")

    waiting.refresh_from_db()
    assert waiting.status == PublishRequestStatus.SCHEDULED
    assert Event.objects.count() == 0
    assert publish_requests_due(now=timezone.now() + dt.timedelta(minutes=31)) == 1
    event = Event.objects.get()
    assert event.status == EventStatus.PUBLISHED
    assert AuditEntry.objects.get(action="event.publish").details["approved_by"] == "policy2"


def test_a_scheduled_publish_whose_schema_was_withdrawn_fails_and_says_why(bus):
    _confirm(
        _client("policy"),
        "tax-policy",
        {"type": "tax_policy.updated", "/payload/standard_deduction": "15000", "effective_at": _in(10)},
    )
    SchemaVersion.objects.filter(event_type__name="tax_policy.updated").update(state="disabled")

    assert publish_requests_due(now=timezone.now() + dt.timedelta(minutes=11)) == 1

    waiting = PublishRequest.objects.get()
    assert waiting.status == PublishRequestStatus.FAILED
    assert "has no active schema version" in waiting.failure
    assert AuditEntry.objects.filter(action="publish_request.fail").exists()
    assert bus.xlen(stream_key("tax-policy")) == 0


def test_who_may_cancel_and_who_may_decide_is_the_services_rule_not_the_pages():
    """Called without any page (a command, the API, a script), the service itself refuses both."""
    from busapp.actions.requests import publish_request_cancel, publish_request_decide
    from busapp.errors import RightRefusedError
    from tests.support import withholding_request

    waiting = withholding_request(User.objects.get(username="policy"))
    with pytest.raises(RightRefusedError, match="only its requester or an approver of the topic may cancel"):
        publish_request_cancel(request_id=waiting.pk, actor=User.objects.get(username="auditor"), reason="no")
    with pytest.raises(RightRefusedError, match="nobody may approve or reject their own request"):
        publish_request_decide(
            request_id=waiting.pk, actor=User.objects.get(username="policy"), approve=True, reason="me"
        )

    waiting.refresh_from_db()
    assert waiting.status == PublishRequestStatus.AWAITING_APPROVAL
    assert not AuditEntry.objects.filter(action__in=["publish_request.cancel", "publish_request.approve"]).exists()
