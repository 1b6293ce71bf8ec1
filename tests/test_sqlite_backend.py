"""The SQLite backend's write lock: a process's write transactions take turns, and every way out gives it back."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections, transaction

from busapp.models import Topic
from busapp.worker.jobs import wal_checkpoint
from hmsadmin.sqlite import base
from tests.support import publish_deduction

pytestmark = [
    pytest.mark.usefixtures("transactional_db"),
    pytest.mark.skipif(connection.vendor != "sqlite", reason="the write lock belongs to the SQLite backend"),
]


def test_a_write_transaction_holds_the_lock_until_commit_or_rollback() -> None:
    assert not base._writer.locked()
    with transaction.atomic():
        Topic.objects.create(name="lock.commit")
        assert base._writer.locked()
    assert not base._writer.locked()
    with pytest.raises(RuntimeError):
        _write_then_fail()
    assert not base._writer.locked()
    assert list(Topic.objects.filter(name__startswith="lock.").values_list("name", flat=True)) == ["lock.commit"]


def _write_then_fail() -> None:
    """A write transaction that an error rolls back."""
    with transaction.atomic():
        Topic.objects.create(name="lock.rollback")
        raise RuntimeError("roll back")


def test_closing_a_connection_mid_transaction_gives_the_lock_back() -> None:
    def write_then_close() -> None:
        conn = connections["default"]
        conn.set_autocommit(False, force_begin_transaction_with_broken_autocommit=True)
        Topic.objects.create(name="lock.closed")
        assert base._writer.locked()
        conn.close()  # a request's thread ends without committing

    worker = threading.Thread(target=write_then_close)
    worker.start()
    worker.join()
    assert not base._writer.locked()
    assert not Topic.objects.filter(name="lock.closed").exists()


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
    wal_checkpoint()  # start from a checkpointed WAL
    for deduction in range(150):
        publish_deduction(deduction)

    held, copied = wal_checkpoint()

    # Each publish appends more than ten pages to the WAL. Had a publisher checkpointed at
    # SQLite's default of 1,000 pages, the WAL would have started over and held fewer.
    assert held > 1500
    assert copied == held
