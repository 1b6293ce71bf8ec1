"""SQLite as configured (WAL, IMMEDIATE): writers of one process take turns; checkpoints are the worker's."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections, transaction

from busapp.models import Topic
from busapp.store import store
from tests.support import publish_deduction

pytestmark = [
    pytest.mark.usefixtures("transactional_db"),
    pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's own write lock and WAL"),
]


def test_writers_in_two_threads_take_turns_and_both_commit() -> None:
    """The second writer waits for the first to commit, then writes; nothing fails with "database is locked"."""
    first_inside, first_may_commit = threading.Event(), threading.Event()
    order: list[str] = []
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with transaction.atomic():
                Topic.objects.create(name="turn.first")
                order.append("first began")
                first_inside.set()
                first_may_commit.wait(5)
                order.append("first commits")
        except BaseException as error:  # reported by the assertion below
            errors.append(error)
        finally:
            connections.close_all()

    def second() -> None:
        try:
            first_inside.wait(5)
            with transaction.atomic():
                order.append("second began")
                Topic.objects.create(name="turn.second")
        except BaseException as error:
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    first_inside.wait(5)
    first_may_commit.set()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert order == ["first began", "first commits", "second began"]
    assert set(Topic.objects.filter(name__startswith="turn.").values_list("name", flat=True)) == {
        "turn.first",
        "turn.second",
    }


@pytest.mark.usefixtures("demo_committed")
def test_publishers_leave_checkpoints_to_the_bus_worker(bus) -> None:
    store().tidy()  # start from a checkpointed WAL
    for deduction in range(150):
        publish_deduction(deduction)

    held, copied = store().tidy() or (0, 0)

    # Each publish appends more than ten pages to the WAL. Had a publisher checkpointed at
    # SQLite's default of 1,000 pages, the WAL would have started over and held fewer.
    assert held > 1500
    assert copied == held
