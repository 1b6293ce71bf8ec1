"""Approvals an approver can judge: what a request changes, what waits for whom, reasons by one rule."""

from __future__ import annotations

import re
import uuid

import pytest
from django.contrib.auth.models import User

from busapp.actions.requests import publish_request_create
from busapp.models import PublishRequest, PublishRequestStatus
from busapp.payload_diff import payload_diff
from tests.support import approved_withholding_event, signed_in, withholding_request

pytestmark = pytest.mark.usefixtures("demo_committed", "bus")


def _policy() -> User:
    return User.objects.get(username="policy")


def _changed_request() -> PublishRequest:
    """A request that changes the first bracket's rate and the effective date, and adds a bracket."""
    return publish_request_create(
        topic="irs.withholding",
        event_type="withholding_table.published",
        payload={
            "tax_year": 2027,
            "effective_date": "2027-07-01",
            "brackets": [{"up_to": 10, "rate": 0.12}, {"up_to": 40, "rate": 0.22}],
        },
        actor=_policy(),
        envelope_id=uuid.uuid4(),
    )


def test_the_diff_names_each_field_added_removed_changed_or_the_same() -> None:
    rows = payload_diff({"a": 1, "b": {"c": 2}, "gone": True}, {"a": 1, "b": {"c": 3}, "new": [1]})

    assert [(row.path, row.before, row.after, row.change) for row in rows] == [
        ("a", "1", "1", "same"),
        ("b.c", "2", "3", "changed"),
        ("gone", "true", None, "removed"),
        ("new.0", None, "1", "added"),
    ]


def test_an_approver_sees_what_a_request_changes_against_the_event_in_force() -> None:
    in_force = approved_withholding_event()
    waiting = _changed_request()

    page = signed_in("policy2").get(waiting.get_absolute_url()).content.decode()

    rows = dict(
        (path, change)
        for path, change in re.findall(r'<tr class="\w+"><td><code>(.*?)</code></td>.*?class="change (\w+)"', page)
    )
    assert rows == {
        "brackets.0.rate": "changed",
        "brackets.0.up_to": "same",
        "brackets.1.rate": "added",
        "brackets.1.up_to": "added",
        "effective_date": "changed",
        "tax_year": "same",
    }
    assert f'href="/events/{in_force.envelope_id}/"' in page


def test_what_waits_for_a_person_is_counted_in_the_navigation_and_listed_once() -> None:
    waiting = withholding_request(_policy())

    approver = signed_in("policy2").get("/").content.decode()
    requester = signed_in("policy").get("/").content.decode()
    listed = signed_in("policy").get("/requests/").content.decode()

    assert re.search(r'<span class="badge count" id="nav-waiting"[^>]*>1<', approver)
    assert 'id="nav-waiting"' not in requester  # nobody decides their own
    assert approver.count(f'href="{waiting.get_absolute_url()}"') == 1  # on the dashboard once, not twice
    mine = re.search(r'<table class="grid requests" id="mine">(.*?)</table>', listed, re.S)
    assert mine is not None
    assert f"#{waiting.pk}" in mine[1]


def test_cancelling_asks_for_a_reason_by_the_same_rule_as_deciding_and_says_it_under_the_field() -> None:
    waiting = withholding_request(_policy())
    client = signed_in("policy")

    blank = client.post(f"/topics/irs.withholding/requests/{waiting.pk}/cancel/", {"reason": "  "})
    too_long = client.post(f"/topics/irs.withholding/requests/{waiting.pk}/cancel/", {"reason": "x" * 1001})
    decided = signed_in("policy2").post(
        f"/topics/irs.withholding/requests/{waiting.pk}/decide/", {"decision": "approve", "reason": "y" * 1001}
    )
    done = client.post(f"/topics/irs.withholding/requests/{waiting.pk}/cancel/", {"reason": "wrong year"})

    assert blank.status_code == too_long.status_code == decided.status_code == 400
    assert re.search(r'id="cancel-reason-error" role="alert">is required: say why', blank.content.decode())
    assert "keep it to 1,000" in too_long.content.decode()
    assert re.search(r'id="reason-error" role="alert">is 1,001 characters', decided.content.decode())
    assert done.status_code == 302
    waiting.refresh_from_db()
    assert (waiting.status, waiting.decision_reason) == (PublishRequestStatus.CANCELLED, "wrong year")
