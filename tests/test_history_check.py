"""``verify_audit_log --events``: each history row re-hashed against its audit entry; edits, additions, losses named."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from busapp import history_check
from busapp.actions.publishing import event_build, event_publish_batch
from busapp.actions.tap import tap_record
from busapp.models import AuditAction, AuditEntry, Event, Source
from busapp.publishing import StreamEntry
from busapp.selectors import schema_version_active
from busapp.store import orm as store_orm
from busapp.store import postgresql as store_postgresql
from busapp.store import sqlite as store_sqlite
from tests.support import manage, publish_deduction

pytestmark = pytest.mark.usefixtures("demo", "bus")


def _batch(*deductions: int) -> list[str]:
    """A batch publish over the API path; its events' ids."""
    items = [{"type": "tax_policy.updated", "payload": {"standard_deduction": d}} for d in deductions]
    return [event.envelope_id for event in event_publish_batch(topic="tax-policy", items=items, actor="test").events]


def _raw(sql: str, params: list[str]) -> None:
    """A change made around the app (which never updates or deletes a history row)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _row_set(envelope_id: str, *, payload: object = None, envelope: str | None = None) -> None:
    """A raw UPDATE of a history row's payload (jsonb on PostgreSQL, text on SQLite) and/or envelope."""
    as_json = "CAST(%s AS jsonb)" if connection.vendor == "postgresql" else "%s"
    sets: list[str] = []
    params: list[str] = []
    if payload is not None:
        sets.append(f"payload = {as_json}")
        params.append(json.dumps(payload))
    if envelope is not None:
        sets.append("envelope = %s")
        params.append(envelope)
    _raw(f"UPDATE busapp_event SET {', '.join(sets)} WHERE envelope_id = %s", [*params, envelope_id])  # noqa: S608


def _verify() -> tuple[str, str]:
    """Run the command; its output, and its error (empty when it exited 0)."""
    out = io.StringIO()
    try:
        call_command("verify_audit_log", "--events", stdout=out, stderr=io.StringIO())
    except CommandError as error:
        return out.getvalue(), str(error)
    return out.getvalue(), ""


def _findings(output: str) -> list[str]:
    """The finding lines: '<kind>: event <id>: <why>'."""
    return [line for line in output.splitlines() if line.startswith(("edited:", "added:", "missing:"))]


def test_untouched_history_is_vouched_for_row_by_row_and_batch_by_batch() -> None:
    """Singles and a batch: every row checked, nothing found, exit 0."""
    publish_deduction(14600)
    publish_deduction(15000)
    _batch(1, 2, 3)

    output, error = _verify()

    assert error == ""
    assert _findings(output) == []
    assert "history: 5 rows and 1 batch entries checked: 0 edited, 0 added, 0 missing" in output
    assert "every row is as the audit log vouches for it" in output


def test_a_payload_edited_with_a_raw_update_is_named_and_the_command_fails() -> None:
    """The payload column (what the pages show) and, separately, an envelope: each row named with what changed."""
    edited_payload = publish_deduction(14600).envelope_id
    edited_envelope = publish_deduction(15000).envelope_id
    untouched = publish_deduction(16000).envelope_id
    _row_set(edited_payload, payload={"standard_deduction": 1})
    envelope = Event.objects.get(envelope_id=edited_envelope).envelope.replace("15000", "150000")
    _row_set(edited_envelope, envelope=envelope)

    output, error = _verify()

    assert sorted(_findings(output)) == sorted(
        [
            f"edited: event {edited_payload}: its payload column no longer matches its envelope",
            f"edited: event {edited_envelope}: its envelope no longer hashes to the digest audit entry "
            f"#{_seq_of(edited_envelope)} holds; its payload column no longer matches its envelope",
        ]
    )
    assert untouched not in output
    assert "2 edited, 0 added, 0 missing" in error


def _seq_of(envelope_id: str) -> int:
    from busapp.models import AuditEntry

    return AuditEntry.objects.get(target=f"event:{envelope_id}", action="event.publish").seq


def test_an_edited_batch_event_is_named_and_its_batch_entry_no_longer_holds() -> None:
    """An envelope and its payload column edited alike: the batch's digest fails, naming its events."""
    ids = _batch(1, 2, 3)
    row = Event.objects.get(envelope_id=ids[1])
    forged = row.envelope.replace('"standard_deduction":2', '"standard_deduction":2000')
    _row_set(ids[1], payload={"standard_deduction": 2000}, envelope=forged)

    output, error = _verify()

    [finding] = _findings(output)
    assert finding.startswith("edited: the events of audit entry #")
    assert "event.publish_batch topic:tax-policy" in finding
    assert "one or more of its 3 events was edited" in finding
    assert all(envelope_id in finding for envelope_id in ids)
    assert "1 edited" in error


def test_deleted_rows_are_named_missing_whether_published_alone_or_in_a_batch() -> None:
    """The audit entry says the event was accepted; the row is gone."""
    alone = publish_deduction(14600).envelope_id
    ids = _batch(1, 2)
    _raw("DELETE FROM busapp_event WHERE envelope_id IN (%s, %s)", [alone, ids[0]])

    output, error = _verify()

    found = _findings(output)
    gone = "says it was accepted; its history row is gone"
    assert f"missing: event {alone}: audit entry #{_seq_of(alone)} (event.publish) {gone}" in found
    assert any(
        line.startswith(f"missing: event {ids[0]}: audit entry #") and "event.publish_batch" in line for line in found
    )
    assert len(found) == 2
    assert "0 edited, 0 added, 2 missing" in error


def test_a_row_inserted_without_an_audit_entry_is_named_added() -> None:
    """A well-formed event written straight to the table: no entry names it."""
    publish_deduction(14600)
    _batch(1)
    version = schema_version_active(topic="tax-policy", event_type="tax_policy.updated")
    forged = event_build(version=version, payload={"standard_deduction": 1}, actor="mallory", source=Source.CLI)
    forged.save()

    output, error = _verify()

    [finding] = _findings(output)
    assert finding.startswith(f"added: event {forged.envelope_id}: on tax-policy, recorded ")
    assert finding.endswith("no audit entry names it")
    assert "0 edited, 1 added, 0 missing" in error


def test_the_check_reads_a_page_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of two rows (and one unvouched row a page): every finding still found across page ends."""
    monkeypatch.setattr(history_check, "_CHUNK", 2)
    for module in (store_sqlite, store_postgresql, store_orm):
        monkeypatch.setattr(module, "_PAGE_ROWS", 1)
    kept = [publish_deduction(d).envelope_id for d in (1, 2, 3, 4, 5)]
    version = schema_version_active(topic="tax-policy", event_type="tax_policy.updated")
    added = []
    for deduction in (6, 7, 8):
        forged = event_build(version=version, payload={"standard_deduction": deduction}, actor="m", source=Source.CLI)
        forged.save()
        added.append(forged.envelope_id)
    _row_set(kept[4], payload={"standard_deduction": 0})

    output, error = _verify()

    assert [line.split(":")[1].strip() for line in _findings(output)] == [
        f"event {kept[4]}",
        *(f"event {a}" for a in added),
    ]
    assert "history: 8 rows" in error


@pytest.mark.usefixtures("demo_committed")
def test_the_command_exits_1_from_the_shell_when_a_row_was_edited(bus: object, suite_redis: object) -> None:
    """As an operator runs it: exit status 1, the row on stdout."""
    edited = publish_deduction(14600).envelope_id
    _row_set(edited, payload={"standard_deduction": 1})

    done = manage("verify_audit_log", "--events", redis_url=suite_redis.url(0))  # type: ignore[attr-defined]

    assert done.returncode == 1
    assert f"edited: event {edited}: its payload column no longer matches its envelope" in done.stdout
    assert "history differs from what the audit log vouches for" in done.stderr


def _tapped(*deductions: int) -> list[str]:
    """External events of tax-policy recorded by the tap in one batch; their ids."""
    entries = []
    for n, deduction in enumerate(deductions):
        envelope = {
            "id": str(uuid.uuid4()),
            "type": "tax_policy.updated",
            "timestamp": 1_800_000_000 + n,
            "payload": {"standard_deduction": deduction},
        }
        entries.append(StreamEntry("stream:tax-policy", f"{n + 1}-0", "tax-policy", json.dumps(envelope).encode()))
    tap_record(entries)
    return [json.loads(entry.body)["id"] for entry in entries]


def test_events_the_tap_recorded_together_are_vouched_for_by_one_entry_and_an_edit_is_named() -> None:
    ids = _tapped(100, 200, 300)
    [entry] = AuditEntry.objects.filter(action=AuditAction.EVENT_RECORD_BATCH)
    assert entry.target == "topic:tax-policy"
    assert entry.details["events"] == ids

    output, error = _verify()
    assert error == ""
    assert "history: 3 rows and 1 batch entries checked: 0 edited, 0 added, 0 missing" in output

    forged = Event.objects.get(envelope_id=ids[1]).envelope.replace(
        '"standard_deduction": 200', '"standard_deduction": 0'
    )
    _row_set(ids[1], payload={"standard_deduction": 0}, envelope=forged)
    output, error = _verify()
    [finding] = _findings(output)
    assert f"{AuditAction.EVENT_RECORD_BATCH} topic:tax-policy" in finding
    assert "one or more of its 3 events was edited" in finding
    assert "1 edited" in error
