"""Several bus worker processes share the jobs: a bulk replay stepped by two or three handles each letter once."""

import json

import pytest
from django.contrib.auth.models import User

from busapp.models import (
    BulkAction,
    BulkActionKind,
    BulkActionStatus,
    DeadLetter,
    DeadLetterStatus,
    Event,
    Source,
    Topic,
)
from busapp.services import bulk_action_start, dead_letter_create
from tests.support import OutputWatcher, manage_background, wait_for

pytestmark = pytest.mark.usefixtures("demo_committed")

LETTERS = 60


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
