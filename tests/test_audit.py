"""The audit log: append-only, hash-chained, and any edit after the fact is found."""

import datetime as dt
import importlib
import io
import itertools
import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from busapp import audit
from busapp.audit import GENESIS_HASH, AuditRecord, audit_append, audit_record, audit_verify, entry_hash
from busapp.models import AuditAction, AuditCheck, AuditEntry, AuditHead, ImmutableRecordError
from busapp.store import driver as store_driver
from tests.support import ROOT, database_url

pytestmark = pytest.mark.django_db


def _write_entries(count: int) -> None:
    with transaction.atomic():
        audit_append(
            actor="test",
            records=[
                AuditRecord(AuditAction.USER_CHANGE, f"thing:{n}", {"n": n, "why": "because"}) for n in range(count)
            ],
        )


@contextmanager
def _append_only_trigger_disabled():
    """What a database superuser could do: switch the trigger off, as a tamperer would."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # ALTER TABLE refuses while FK checks are deferred
            cursor.execute("ALTER TABLE busapp_auditentry DISABLE TRIGGER audit_append_only")
        else:
            cursor.execute("DROP TRIGGER audit_append_only")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("ALTER TABLE busapp_auditentry ENABLE TRIGGER audit_append_only")
            else:
                cursor.execute(importlib.import_module("busapp.migrations.0002_audit_append_only").SQLITE_CREATE)


def test_entries_link_each_to_the_one_before():
    _write_entries(3)

    first, second, third = AuditEntry.objects.order_by("seq")
    assert [first.seq, second.seq, third.seq] == [1, 2, 3]
    assert first.prev_hash == "0" * 64
    assert second.prev_hash == first.hash
    assert third.prev_hash == second.hash
    report = audit_verify()
    assert (report.intact, report.checked, report.last_hash) == (True, 3, third.hash)


def test_a_head_remembered_wrongly_is_read_again_and_the_chain_stays_whole():
    _write_entries(2)
    # What this process remembers after another process appended in between, or after a rollback.
    audit._remembered_heads[audit._database_key()] = (1, AuditEntry.objects.get(seq=1).hash)

    _write_entries(1)

    assert list(AuditEntry.objects.order_by("seq").values_list("seq", flat=True)) == [1, 2, 3]
    assert AuditEntry.objects.get(seq=3).prev_hash == AuditEntry.objects.get(seq=2).hash
    assert audit_verify().intact


def test_the_app_refuses_to_update_or_delete_an_entry():
    _write_entries(1)
    entry = AuditEntry.objects.get()

    with pytest.raises(ImmutableRecordError):
        entry.save()
    with pytest.raises(ImmutableRecordError):
        entry.delete()
    with pytest.raises(ImmutableRecordError):
        AuditEntry.objects.update(action="x")
    with pytest.raises(ImmutableRecordError):
        AuditEntry.objects.all().delete()


def test_the_database_refuses_a_raw_update():
    _write_entries(1)

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE busapp_auditentry SET action = 'nouser.changeed'")


@pytest.mark.django_db(transaction=True)
def test_an_entry_is_only_written_inside_the_transaction_of_its_change():
    with pytest.raises(RuntimeError, match="in the transaction of the change"):
        audit_record(actor="test", action=AuditAction.USER_CHANGE, target="thing:1")

    assert AuditEntry.objects.count() == 0


def test_an_entry_edited_with_raw_sql_breaks_verify_audit_log_at_that_entry():
    _write_entries(5)
    with _append_only_trigger_disabled(), connection.cursor() as cursor:
        cursor.execute("UPDATE busapp_auditentry SET details = %s WHERE seq = 3", ['{"n": 2, "why": "edited"}'])

    with pytest.raises(CommandError, match=r"broken at entry #3: entry #3 \(user.change thing:2\) was changed"):
        call_command("verify_audit_log")
    report = audit_verify()
    assert (report.broken_seq, report.last_seq, report.checked) == (3, 2, 2)


def test_a_removed_entry_breaks_the_chain_at_the_gap():
    _write_entries(5)
    with _append_only_trigger_disabled(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM busapp_auditentry WHERE seq = 4")

    report = audit_verify()

    assert (report.intact, report.broken_seq) == (False, 4)
    assert report.problem == "entry #4 is missing"


def test_removing_the_newest_entry_is_found_by_the_head():
    _write_entries(5)
    with _append_only_trigger_disabled(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM busapp_auditentry WHERE seq = 5")

    report = audit_verify()

    assert report.broken_seq == 5
    assert "the newest entries were removed" in report.problem


def test_verify_audit_log_exits_zero_and_prints_the_head_when_intact():
    _write_entries(4)
    out = io.StringIO()

    call_command("verify_audit_log", stdout=out)

    head = AuditEntry.objects.get(seq=4).hash
    summary, speed = out.getvalue().strip().splitlines()
    assert summary == f"audit log intact: 4 entries verified through #4, head hash {head}"
    assert re.fullmatch(r"4 entries in \d+\.\d\d s: [\d,]+ entries/s", speed)


@pytest.mark.django_db(transaction=True)
def test_two_writers_at_once_never_fork_the_chain():
    import threading

    from django.db import connections

    errors = []

    def writer(name):
        try:
            for n in range(40):
                with transaction.atomic():
                    audit_record(actor=name, action=AuditAction.USER_CHANGE, target=f"thing:{name}:{n}")
        except Exception as error:  # surfaced below
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(f"writer-{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    report = audit_verify()
    assert (report.intact, report.checked) == (True, 80)
    assert sorted(AuditEntry.objects.values_list("seq", flat=True)) == list(range(1, 81))


# The fast check: the hash rebuilt from raw rows is byte for byte ``entry_hash``.

TRICKY_DETAILS = [
    {},
    {"name": "Grüße, Zoë ✓ 😀 中文", "quote": 'say "hi" \\ back/slash', "control": "tab\there\nnewline\x01"},
    {"z": {"b": [1, {"y": None, "a": True}], "a": []}, "a": [[], {}, ""], "m": {"é": 1, "e": 2, "E": 3}},
    {"float": 0.1, "half": 1.5, "tiny": -2.5e-07, "whole": 3.0, "small": 1e-10, "int": -7, "big_int": 2**62},
]


@pytest.mark.parametrize("details", TRICKY_DETAILS, ids=["empty", "unicode", "nested", "numbers"])
@pytest.mark.parametrize("microsecond", [0, 1, 123456], ids=["no-fraction", "one-us", "fraction"])
def test_the_hash_rebuilt_from_strings_is_entry_hash_byte_for_byte(details, microsecond):
    when = dt.datetime(2026, 11, 27, 20, 10, 0, microsecond, tzinfo=dt.UTC)
    fields = {"seq": 42, "actor_name": 'Zoë "the" auditor', "action": "thing.änder", "target": "thing:ü/\\1"}

    rebuilt = audit._row_hash(
        "ab" * 32, 42, when.isoformat(), fields["actor_name"], fields["action"], fields["target"], details
    )

    assert rebuilt == entry_hash(prev_hash="ab" * 32, time=when, details=details, **fields)


@pytest.mark.parametrize("microsecond", [0, 654321], ids=["no-fraction", "fraction"])
def test_entries_read_raw_from_the_database_hash_as_written_without_the_orm_fallback(monkeypatch, microsecond):
    when = dt.datetime(2026, 11, 27, 20, 10, 0, microsecond, tzinfo=dt.UTC)
    monkeypatch.setattr(audit.timezone, "now", lambda: when)
    with transaction.atomic():
        audit_append(actor="Zoë", records=[AuditRecord(AuditAction.USER_CHANGE, "thing:ü", d) for d in TRICKY_DETAILS])
    # Only the fast path may vouch for an entry here: its fallback is for times stored in other formats.
    monkeypatch.setattr(audit, "_row_hash_as_django_reads", lambda row: None)

    report = audit_verify()

    assert (report.intact, report.checked) == (True, len(TRICKY_DETAILS))


def test_a_time_stored_in_another_format_is_read_as_django_reads_it():
    when = dt.datetime(2026, 11, 27, 20, 10, 0, 500000, tzinfo=dt.UTC)
    row = (1, "2026-11-27T21:10:00.5+01:00", "test", "user.change", "thing:1", '{"n": 1}', GENESIS_HASH, "")
    fields = {"actor_name": "test", "action": "user.change", "target": "thing:1", "details": {"n": 1}}

    assert audit._row_hash_as_django_reads(row) == entry_hash(prev_hash=GENESIS_HASH, seq=1, time=when, **fields)


def test_values_stored_in_another_spelling_verify_as_django_reads_them():
    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL stores times and JSON in its own form; only SQLite keeps the text it was given")
    _write_entries(2)
    entry = AuditEntry.objects.get(seq=2)
    with _append_only_trigger_disabled(), connection.cursor() as cursor:
        cursor.execute(
            "UPDATE busapp_auditentry SET time = %s, details = %s WHERE seq = 2",
            [entry.time.isoformat(), ' {"why":   "because", "n": 1} '],
        )

    report = audit_verify()

    assert (report.intact, report.checked) == (True, 2)


# Every run is written down, and a run can resume after the last intact one.


def test_every_run_is_recorded_as_a_check_intact_or_not():
    _write_entries(3)
    intact = audit_verify(checked_by="alice")
    with _append_only_trigger_disabled(), connection.cursor() as cursor:
        cursor.execute("UPDATE busapp_auditentry SET target = 'thing:other' WHERE seq = 2")

    broken = audit_verify()

    newest, first = AuditCheck.objects.all()  # newest first
    assert (first.checked_by, first.from_seq, first.through_seq) == ("alice", 1, 3)
    assert first.through_hash == intact.last_hash
    assert (first.checked, first.intact, first.seconds) == (3, True, intact.seconds)
    assert (newest.through_seq, newest.broken_seq, newest.problem) == (1, 2, broken.problem)
    assert newest.checked_by == "system:audit-check"
    assert not newest.intact


def test_resume_starts_after_the_newest_intact_check_and_verifies_only_newer_entries():
    _write_entries(5)
    audit_verify()
    _write_entries(3)

    report = audit_verify(resume=True)

    assert (report.intact, report.from_seq, report.checked, report.last_seq) == (True, 6, 3, 8)
    assert report.last_hash == AuditEntry.objects.get(seq=8).hash
    check = AuditCheck.objects.first()
    assert (check.from_seq, check.through_seq, check.checked) == (6, 8, 3)


def test_resume_with_nothing_new_checks_nothing_and_stays_intact():
    _write_entries(2)
    audit_verify()

    report = audit_verify(resume=True)

    assert (report.intact, report.from_seq, report.checked, report.last_seq) == (True, 3, 0, 2)


def test_resume_after_a_broken_check_starts_from_the_last_intact_one():
    _write_entries(3)
    audit_verify()
    AuditCheck.objects.create(checked_by="x", from_seq=1, through_seq=1, through_hash="f" * 64, checked=1, broken_seq=2)

    report = audit_verify(resume=True)

    assert (report.intact, report.from_seq, report.checked) == (True, 4, 0)


def test_resume_starts_over_from_entry_1_when_the_checked_entry_no_longer_carries_its_hash():
    _write_entries(5)
    audit_verify()
    forged = "f" * 64
    with _append_only_trigger_disabled(), connection.cursor() as cursor:
        cursor.execute("UPDATE busapp_auditentry SET hash = %s WHERE seq = 5", [forged])
    AuditHead.objects.filter(pk=1).update(hash=forged)

    report = audit_verify(resume=True)

    assert (report.from_seq, report.broken_seq, report.checked) == (1, 5, 4)
    assert report.problem.startswith("entry #5 (user.change thing:4) was changed after it was written")


def test_a_log_cut_back_after_an_intact_check_is_found_even_with_a_matching_head():
    _write_entries(5)
    audit_verify()
    third = AuditEntry.objects.get(seq=3)
    with _append_only_trigger_disabled(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM busapp_auditentry WHERE seq > 3")
    AuditHead.objects.filter(pk=1).update(seq=3, hash=third.hash)

    for resume in (False, True):
        report = audit_verify(resume=resume)

        assert (report.broken_seq, report.last_seq, report.last_hash) == (4, 3, third.hash)
        assert "found the log intact through entry #5, but it now ends at entry #3" in report.problem


def test_a_log_rewritten_and_rehashed_after_an_intact_check_is_found():
    _write_entries(3)
    audit_verify()
    _rewrite_and_rehash(seq=3, details={"n": 2, "why": "forged"})

    report = audit_verify()

    assert (report.broken_seq, report.last_seq) == (3, 2)
    assert report.problem.startswith("entry #3 no longer carries the hash that the check of")


# What the auditor reads: the first broken entry and what is wrong with it.


def _rewrite_and_rehash(*, seq: int, details: dict) -> None:
    """What a careful tamperer does: change an entry and give it a matching hash (and the head, if it is the newest)."""
    entry = AuditEntry.objects.get(seq=seq)
    forged = entry_hash(
        prev_hash=entry.prev_hash,
        seq=seq,
        time=entry.time,
        actor_name=entry.actor_name,
        action=entry.action,
        target=entry.target,
        details=details,
    )
    with _append_only_trigger_disabled(), connection.cursor() as cursor:
        cursor.execute(
            "UPDATE busapp_auditentry SET details = %s, hash = %s WHERE seq = %s",
            [json.dumps(details), forged, seq],
        )
    AuditHead.objects.filter(pk=1, seq=seq).update(hash=forged)


def test_an_entry_with_edited_details_is_named_with_its_seq_action_and_target():
    _write_entries(5)
    with _append_only_trigger_disabled(), connection.cursor() as cursor:
        cursor.execute("UPDATE busapp_auditentry SET details = %s WHERE seq = 4", ['{"n": 3, "why": "edited"}'])

    report = audit_verify()

    assert (report.intact, report.broken_seq, report.last_seq, report.checked) == (False, 4, 3, 3)
    assert report.problem == (
        "entry #4 (user.change thing:3) was changed after it was written: its content no longer matches its hash"
    )


def test_an_entry_replaced_with_a_fresh_hash_breaks_the_link_of_the_next_one():
    _write_entries(5)
    _rewrite_and_rehash(seq=2, details={"n": 1, "why": "forged"})

    report = audit_verify()

    assert (report.broken_seq, report.last_seq) == (3, 2)
    assert report.problem.startswith("entry #3 does not link to entry #2: the hash it records for entry #2 is not")


def test_several_removed_entries_are_named_as_a_range():
    _write_entries(6)
    with _append_only_trigger_disabled(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM busapp_auditentry WHERE seq IN (2, 3, 4)")

    report = audit_verify()

    assert (report.broken_seq, report.last_seq, report.problem) == (2, 1, "entries #2 to #4 are missing")


def test_a_head_that_does_not_match_the_newest_entry_is_named():
    _write_entries(3)
    AuditHead.objects.filter(pk=1).update(hash="e" * 64)

    report = audit_verify()

    assert (report.broken_seq, report.last_seq) == (3, 2)
    assert report.last_hash == AuditEntry.objects.get(seq=2).hash
    assert report.problem == (
        "entry #3 does not carry the hash the chain head records for it: the newest entry or the head was rewritten"
    )


def test_entries_past_the_head_are_named():
    _write_entries(3)
    second = AuditEntry.objects.get(seq=2)
    AuditHead.objects.filter(pk=1).update(seq=2, hash=second.hash)

    report = audit_verify()

    assert (report.broken_seq, report.last_seq) == (3, 2)
    assert report.problem.startswith("entry #3 comes after the chain head (entry #2)")


def test_entries_without_a_head_are_named():
    _write_entries(2)
    AuditHead.objects.all().delete()

    report = audit_verify()

    assert (report.broken_seq, report.last_seq, report.checked) == (1, 0, 0)
    assert report.problem.startswith("entry #1 comes after the chain head, which records no entry")


def test_verify_audit_log_resume_says_where_it_resumed():
    _write_entries(2)
    call_command("verify_audit_log", stdout=io.StringIO())
    _write_entries(1)
    out = io.StringIO()

    call_command("verify_audit_log", "--resume", stdout=out)

    head = AuditEntry.objects.get(seq=3).hash
    assert out.getvalue().splitlines()[0] == (
        f"audit log intact: 1 entries verified through #3 (resumed at #3), head hash {head}"
    )
    assert AuditCheck.objects.first().checked_by.startswith("cli:")


# A long chain is checked in two processes, one half each; the halves must join.


@pytest.fixture
def split_check(monkeypatch):
    """Checks of 10 entries or more split between this process and a forked one; the calls made here, recorded."""
    monkeypatch.setattr(audit, "PARALLEL_FROM", 10)
    # Earlier tests may leave idle threads (asgiref's executor); the forked checker uses none of them.
    monkeypatch.setattr(audit, "_single_threaded", lambda: True)
    calls = []
    stretch_check = audit._stretch_check

    def recorded(**kwargs):
        calls.append(kwargs)
        return stretch_check(**kwargs)

    monkeypatch.setattr(audit, "_stretch_check", recorded)
    return calls


@pytest.mark.django_db(transaction=True)
def test_a_long_chain_is_checked_in_two_processes(split_check):
    _write_entries(40)

    report = audit_verify()

    assert (report.intact, report.checked, report.last_seq) == (True, 40, 40)
    assert report.last_hash == AuditEntry.objects.get(seq=40).hash
    assert split_check == [{"after_seq": 0, "after_hash": GENESIS_HASH, "through_seq": 20}]  # the other half forked


@pytest.mark.django_db(transaction=True)
def test_a_forked_checker_that_fails_leaves_its_half_to_this_process(split_check, monkeypatch, caplog):
    _write_entries(40)

    def no_connection(engine):
        raise RuntimeError("too many connections")

    monkeypatch.setattr(store_driver, "load_backend", no_connection)  # only the forked checker opens a connection

    report = audit_verify()

    assert (report.intact, report.checked, report.last_seq) == (True, 40, 40)
    assert "the forked checker failed; checking #21 on here" in caplog.text
    assert [call["through_seq"] for call in split_check] == [20, 40]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("tamper", "broken_seq", "problem"),
    [
        ("UPDATE busapp_auditentry SET details = '{}' WHERE seq = 5", 5, "entry #5 (user.change thing:4) was changed"),
        ("UPDATE busapp_auditentry SET details = '{}' WHERE seq = 30", 30, "entry #30 (user.change thing:29) was"),
        ("DELETE FROM busapp_auditentry WHERE seq = 20", 20, "entry #20 is missing"),
        ("DELETE FROM busapp_auditentry WHERE seq = 21", 21, "entry #21 is missing"),
        ("DELETE FROM busapp_auditentry WHERE seq > 38", 39, "the newest entries were removed (#39 to #40)"),
        ("rehash entry 20", 21, "entry #21 does not link to entry #20"),
    ],
    ids=["first-half", "second-half", "last-of-first-half", "first-of-second-half", "cut-short", "unlinked-halves"],
)
def test_a_break_in_either_half_or_where_they_meet_is_found(split_check, tamper, broken_seq, problem):
    _write_entries(40)
    if tamper == "rehash entry 20":
        _rewrite_and_rehash(seq=20, details={"forged": True})
    else:
        with _append_only_trigger_disabled(), connection.cursor() as cursor:
            cursor.execute(tamper)

    report = audit_verify()

    assert (report.broken_seq, report.checked, report.last_seq) == (broken_seq, broken_seq - 1, broken_seq - 1)
    assert problem in report.problem
    assert len(split_check) == 1


# Writers in separate processes, at once, append to one chain.

# Each writer pauses a moment between its transactions, as real ones do: on SQLite a writer
# that commits and begins again at once can keep the lock for all its entries.
_WRITER = """
import sys, time
from django.db import transaction
from busapp.audit import audit_record
from busapp.models import AuditAction
name = sys.argv[1]
print("ready", flush=True)
sys.stdin.readline()
for n in range(200):
    with transaction.atomic():
        audit_record(actor=name, action=AuditAction.USER_CHANGE, target=f"thing:{name}:{n}")
    time.sleep(0.001)
print("done", flush=True)
"""


@pytest.mark.django_db(transaction=True)
def test_two_writer_processes_at_once_leave_one_chain_without_a_fork():
    env = {**os.environ, "DATABASE_URL": database_url(), "DJANGO_SETTINGS_MODULE": "hmsadmin.settings"}
    setup = "import django; django.setup()\n"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", setup + _WRITER, f"writer-{n}"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    try:
        for writer in writers:  # both started, Django set up: let them go together
            assert writer.stdout.readline().strip() == "ready"
        for writer in writers:
            writer.stdin.write("go\n")
            writer.stdin.flush()
        outputs = [writer.communicate(timeout=120)[0] for writer in writers]
    finally:
        for writer in writers:
            writer.kill()
            writer.wait()

    assert [writer.returncode for writer in writers] == [0, 0], outputs
    report = audit_verify()
    assert (report.intact, report.checked, report.last_seq) == (True, 400, 400)
    assert sorted(AuditEntry.objects.values_list("seq", flat=True)) == list(range(1, 401))
    assert AuditEntry.objects.filter(actor_name="writer-0").count() == 200
    actors = list(AuditEntry.objects.order_by("seq").values_list("actor_name", flat=True))
    assert sum(a != b for a, b in itertools.pairwise(actors)) >= 2  # they wrote at once, taking turns
    assert AuditEntry.objects.values("prev_hash").distinct().count() == 400  # no two entries follow the same one


def test_an_action_not_named_in_audit_action_is_refused_and_nothing_written() -> None:
    """Every writer names its action from one enum: a free string (a typo) is an error, not a new kind of entry."""
    before = AuditEntry.objects.count()
    with pytest.raises(ValueError, match=r"'user\.chnage' is not one of AuditAction's"), transaction.atomic():
        audit_append(
            actor="test",
            records=[
                AuditRecord(AuditAction.USER_CHANGE, "x:1", {}),
                AuditRecord("user.chnage", "x:2", {}),  # type: ignore[arg-type]
            ],
        )
    assert AuditEntry.objects.count() == before
