"""Auditors read everything and change nothing: every write answers 403 and the attempt is in the audit log."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import User
from django.test import Client

from busapp.actions.dead_letters import bulk_action_start, dead_letter_create
from busapp.actions.publishing import event_publish
from busapp.models import AuditEntry, BulkAction, DeadLetter, PublishRequest, Source, Topic
from tests.support import withholding_request

pytestmark = pytest.mark.usefixtures("demo_committed", "bus")


@pytest.fixture
def targets() -> dict[str, int]:
    """One of each thing a write acts on: a dead letter, a waiting publish request, a running bulk action."""
    admin, policy = User.objects.get(username="admin"), User.objects.get(username="policy")
    topic = Topic.objects.get(name="tax-policy")
    letter = dead_letter_create(
        topic=topic,
        raw=json.dumps({"type": "tax_policy.updated", "payload": {"standard_deduction": -5}}),
        errors=[{"path": "/payload/standard_deduction", "message": "must be 0 or more"}],
        source=Source.CLI,
        actor="cli:test",
    )
    waiting = withholding_request(policy)
    bulk = bulk_action_start(
        topic=topic, kind="discard", letter_ids=[letter.pk], actor=admin, rate_per_second=1, reason="x"
    )
    return {"letter": letter.pk, "request": waiting.pk, "bulk": bulk.pk}


WRITES = [
    ("/topics/tax-policy/publish/", {"type": "tax_policy.updated", "/payload/standard_deduction": "15000"}),
    ("/topics/tax-policy/publish/confirm/", {"token": "x"}),
    ("/topics/irs.withholding/requests/{request}/decide/", {"decision": "approve", "reason": "looks right"}),
    ("/topics/irs.withholding/requests/{request}/cancel/", {"reason": "no"}),
    ("/dlq/{letter}/replay/", {"type": "tax_policy.updated", "/payload/standard_deduction": "1"}),
    ("/dlq/{letter}/discard/", {"reason": "noise"}),
    ("/dlq/bulk/estimate/", {"topic": "tax-policy", "kind": "replay"}),
    ("/dlq/bulk/", {"topic": "tax-policy", "kind": "replay", "letters": "{letter}", "rate": "10"}),
    ("/dlq/bulk/{bulk}/cancel/", {}),
    ("/admin/busapp/topic/add/", {"name": "auditor.topic", "stream_retention": "100"}),
    ("/admin/auth/user/add/", {"username": "mallory", "password1": "x" * 20, "password2": "x" * 20}),
]


@pytest.mark.parametrize(("url", "data"), WRITES, ids=[url for url, _ in WRITES])
def test_an_auditor_is_refused_every_write_and_the_attempt_is_audited(targets: dict, url: str, data: dict) -> None:
    client = Client()
    client.force_login(User.objects.get(username="auditor"))
    before = AuditEntry.objects.filter(actor_name="auditor").count()
    state = _state()
    path = url.format(**targets)
    response = client.post(path, {key: value.format(**targets) for key, value in data.items()})
    assert response.status_code == 403
    refusals = AuditEntry.objects.filter(actor_name="auditor").order_by("seq")[before:]
    assert len(refusals) == 1, [entry.action for entry in refusals]
    assert refusals[0].action.endswith("refused")
    assert refusals[0].details["path"] == path
    assert _state() == state, "a refused write changed something"


def _state() -> tuple:
    return (
        list(DeadLetter.objects.values_list("status", flat=True)),
        list(PublishRequest.objects.values_list("status", flat=True)),
        list(BulkAction.objects.values_list("status", flat=True)),
        Topic.objects.count(),
        User.objects.count(),
    )


def test_an_auditor_reads_every_topic_history_live_and_dead_letters(targets: dict) -> None:
    event = event_publish(
        topic="tax-policy",
        event_type="tax_policy.updated",
        payload={"standard_deduction": 15000},
        actor="cli:root",
        source=Source.CLI,
    )
    client = Client()
    client.force_login(User.objects.get(username="auditor"))
    for path in (
        "/",
        "/topics/",
        "/topics/irs.withholding/",
        "/live/",
        "/dlq/",
        f"/dlq/{targets['letter']}/",
        "/events/",
        "/audit/",
    ):
        assert client.get(path).status_code == 200, path
    assert event.envelope_id in client.get("/events/").content.decode()
    assert client.get(f"/events/{event.envelope_id}/").status_code == 200
