"""Several bus worker processes share the jobs: bulk replays, scheduled publishes, grant expiry and audit checks."""

import itertools
import json

import pytest
from django.contrib.auth.models import User
from django.db import transaction

from busapp.actions.dead_letters import bulk_action_start, dead_letter_create
from busapp.models import (
    AuditAction,
    BulkAction,
    BulkActionKind,
    BulkActionStatus,
    DeadLetter,
    DeadLetterStatus,
    Event,
    Source,
    Topic,
)
from tests.support import OutputWatcher, manage_background, wait_for

pytestmark = pytest.mark.usefixtures("demo_committed")

LETTERS = 60
AUDIT_FILLER = 40_000  # audit entries: a full check of them takes about a second


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_stepping_one_bulk_replay_replay_each_letter_once_and_report_it_right(bus, suite_redis, workers):
    topic = Topic.objects.get(name="tax-policy")
    letters = [
        dead_letter_create(
            topic=topic,
            raw=json.dumps({"type": "tax_policy.updated", "payload": {"standard_deduction": n}}),
            errors=[{"path": "/payload", "message": "refused by an older schema"}],
            source=Source.EXTERNAL,
            actor="external",
        )
        for n in range(LETTERS)
    ]
    processes = [
        OutputWatcher(manage_background("bus_worker", "--name", f"worker-{n}", redis_url=suite_redis.url()))
        for n in range(workers)
    ]
    try:
        for process in processes:
            process.wait_for_line("running", timeout=30)
        action = bulk_action_start(
            topic=topic,
            kind=BulkActionKind.REPLAY,
            letter_ids=[letter.pk for letter in letters],
            actor=User.objects.get(username="admin"),
            rate_per_second=500,  # a few letters a step: every worker gets its chances at the action
        )
        wait_for(
            lambda: BulkAction.objects.get(pk=action.pk).status == BulkActionStatus.DONE,
            timeout=60,
            what="the bulk replay to finish",
        )
    finally:
        for process in processes:
            process.stop()

    action.refresh_from_db()
    assert (action.handled, action.succeeded, action.skipped) == (LETTERS, LETTERS, 0)
    assert sorted(line["letter"] for line in action.report) == sorted(letter.pk for letter in letters)
    assert Event.objects.filter(source=Source.REPLAY).count() == LETTERS  # each letter replayed once
    assert not DeadLetter.objects.filter(status=DeadLetterStatus.OPEN).exists()
    assert sorted(Event.objects.values_list("payload__standard_deduction", flat=True)) == list(range(LETTERS))


def _workers(count: int, suite_redis) -> list[OutputWatcher]:
    """``count`` bus_worker processes on the tests' database and Redis, each running."""
    processes = [
        OutputWatcher(manage_background("bus_worker", "--name", f"worker-{n}", redis_url=suite_redis.url()))
        for n in range(count)
    ]
    for process in processes:
        process.wait_for_line("running", timeout=30)
    return processes


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_publish_each_scheduled_request_once(bus, suite_redis, workers):
    import datetime as dt
    import uuid

    from django.utils import timezone

    from busapp.actions.requests import publish_request_create
    from busapp.models import AuditEntry, PublishRequest, PublishRequestStatus
    from busapp.publishing import stream_key

    policy = User.objects.get(username="policy")
    processes = _workers(workers, suite_redis)
    try:
        due = timezone.now() + dt.timedelta(seconds=2)  # every worker is running and looking by then
        requests = [
            publish_request_create(
                topic="tax-policy",
                event_type="tax_policy.updated",
                payload={"standard_deduction": n},
                actor=policy,
                envelope_id=uuid.uuid4(),
                effective_at=due,
            )
            for n in range(20)
        ]
        wait_for(
            lambda: not PublishRequest.objects.exclude(status=PublishRequestStatus.PUBLISHED).exists(),
            timeout=30,
            what="every scheduled request to go out",
        )
    finally:
        for process in processes:
            process.stop()

    ids = [request.envelope_id for request in requests]
    streamed = [json.loads(fields[b"event"])["id"] for _, fields in bus.xrange(stream_key("tax-policy"))]
    assert sorted(streamed) == sorted(ids)  # on the bus once each
    assert Event.objects.filter(envelope_id__in=ids).count() == len(ids)
    published = AuditEntry.objects.filter(action="event.publish", target__in=[f"event:{i}" for i in ids])
    assert published.count() == len(ids)  # one audit entry each, whichever worker sent it


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_expire_each_grant_once_with_one_audit_entry(suite_redis, workers, monkeypatch):
    import datetime as dt

    from django.utils import timezone

    from busapp.actions.access import grant_create
    from busapp.models import AuditEntry
    from busapp.permissions import PUBLISH_TOPIC, VIEW_TOPIC

    grant_create(
        principal=User.objects.get(username="policy2"),
        topics=list(Topic.objects.all()),
        rights=[VIEW_TOPIC, PUBLISH_TOPIC],
        reason="covering a colleague for a moment",
        actor=User.objects.get(username="admin"),
        expires_at=timezone.now() + dt.timedelta(seconds=1),
    )
    granted = Topic.objects.count() * 2
    processes = _workers(workers, suite_redis)  # tidying runs at each worker's start, then every 30 s
    try:
        wait_for(
            lambda: AuditEntry.objects.filter(action="access.expire").count() >= granted,
            timeout=60,
            what="the grants to expire",
        )
    finally:
        for process in processes:
            process.stop()

    assert AuditEntry.objects.filter(action="access.expire").count() == granted  # once each, not once per worker


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_check_the_audit_chain_one_at_a_time(suite_redis, workers):
    """Each worker checks the whole chain as it starts: under the lease no two checks overlap, the rest wait."""
    import datetime as dt

    from busapp.audit import AuditRecord, audit_append
    from busapp.models import AuditCheck

    with transaction.atomic():  # a chain long enough that one full check takes a while
        audit_append(
            actor="test",
            records=[AuditRecord(AuditAction.USER_CHANGE, f"filler:{n}", {"n": n}) for n in range(AUDIT_FILLER)],
        )
    processes = _workers(workers, suite_redis)
    skip = "another worker is checking the chain"
    try:
        wait_for(
            lambda: (
                AuditCheck.objects.filter(checked_by="system:bus-worker").count()
                + sum(process.count(skip) for process in processes)
                >= workers
            ),
            timeout=120,
            what="every worker's first turn at the audit check",
        )
    finally:
        for process in processes:
            process.stop()

    checks = list(AuditCheck.objects.filter(checked_by="system:bus-worker").order_by("checked_at"))
    assert checks
    assert all(check.intact for check in checks)
    runs = [(check.checked_at - dt.timedelta(seconds=check.seconds), check.checked_at) for check in checks]
    overlapping = [(a, b) for a, b in itertools.pairwise(runs) if b[0] < a[1]]
    assert overlapping == []  # one check at a time
