"""The audit log: append-only, hash-chained, and any edit after the fact is found."""

import importlib
import io
from contextlib import contextmanager

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from busapp import audit
from busapp.audit import AuditRecord, audit_append, audit_record, audit_verify
from busapp.models import AuditEntry, ImmutableRecordError

pytestmark = pytest.mark.django_db


def _write_entries(count: int) -> None:
    with transaction.atomic():
        audit_append(
            actor="test",
            records=[AuditRecord("thing.happen", f"thing:{n}", {"n": n, "why": "because"}) for n in range(count)],
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
        cursor.execute("UPDATE busapp_auditentry SET action = 'nothing.happened'")


@pytest.mark.django_db(transaction=True)
def test_an_entry_is_only_written_inside_the_transaction_of_its_change():
    with pytest.raises(RuntimeError, match="in the transaction of the change"):
        audit_record(actor="test", action="thing.happen", target="thing:1")

    assert AuditEntry.objects.count() == 0


def test_an_entry_edited_with_raw_sql_breaks_verify_audit_log_at_that_entry():
    _write_entries(5)
    with _append_only_trigger_disabled(), connection.cursor() as cursor:
        cursor.execute("UPDATE busapp_auditentry SET details = %s WHERE seq = 3", ['{"n": 2, "why": "edited"}'])

    with pytest.raises(CommandError, match=r"broken at entry #3: entry #3 \(thing.happen thing:2\) was changed"):
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
    assert out.getvalue().strip() == f"audit log intact: 4 entries verified through #4, head hash {head}"


@pytest.mark.django_db(transaction=True)
def test_two_writers_at_once_never_fork_the_chain():
    import threading

    from django.db import connections

    errors = []

    def writer(name):
        try:
            for n in range(40):
                with transaction.atomic():
                    audit_record(actor=name, action="thing.happen", target=f"thing:{name}:{n}")
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
