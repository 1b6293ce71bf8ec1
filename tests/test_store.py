"""The raw-SQL store against its oracle, the ORM store: the same operations, the same rows and answers.

Each test runs an operation under ``BUS_STORE=sql`` (this database's own statements) and
under ``BUS_STORE=orm`` (plain Django), and compares what a user would see: history rows,
audit entries, the chain check's verdict, the lookups, the exports.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from busapp import audit
from busapp.actions.publishing import event_build, event_publish_batch
from busapp.audit import AuditRecord, _chain_entries, audit_verify
from busapp.history import HistoryFilter, audit_export_lines, events_filtered, export_lines
from busapp.models import AuditAction, AuditEntry, Event, EventStatus, SchemaVersion, Source
from busapp.selectors import schema_version_active
from busapp.store import store
from busapp.store.orm import OrmStore
from tests.support import publish_deduction
from tests.test_audit import _append_only_trigger_disabled

pytestmark = pytest.mark.usefixtures("demo", "bus")

T = TypeVar("T")
KINDS = ("sql", "orm")


def _under_each_store(operation: Callable[[], T]) -> dict[str, T]:
    """The operation's answer under each store."""
    answers = {}
    for kind in KINDS:
        with override_settings(BUS_STORE=kind):
            answers[kind] = operation()
    return answers


def test_the_sql_store_is_this_databases_own_and_the_orm_store_is_plain_django() -> None:
    stores = _under_each_store(store)
    assert not isinstance(stores["sql"], OrmStore)
    assert type(stores["sql"]).__module__ == f"busapp.store.{connection.vendor}"
    assert isinstance(stores["orm"], OrmStore)


def _published(deductions: tuple[int, ...], on_commit: Any) -> dict[str, Any]:
    """Publish one event alone and a batch (one item invalid); what history, the dead letters and the log then hold."""
    items = [{"type": "tax_policy.updated", "payload": {"standard_deduction": d}} for d in deductions[1:]]
    items.append({"type": "tax_policy.updated", "payload": {"standard_deduction": "a lot"}})
    with on_commit(execute=True):
        first = publish_deduction(deductions[0]).envelope_id
        outcome = event_publish_batch(topic="tax-policy", items=items, actor="test")
    ids = [first, *(event.envelope_id for event in outcome.events)]
    events = [Event.objects.get(envelope_id=envelope_id) for envelope_id in ids]
    return {
        "events": [_event_view(event) for event in events],
        "dead_letters": [letter.errors for letter in outcome.dead_letters],
        "audit": [_entry_view(entry, ids) for entry in AuditEntry.objects.order_by("-seq")[:3][::-1]],
        "chain_intact": audit_verify(checked_by="test").intact,
    }


def _event_view(event: Event) -> dict[str, Any]:
    """An event row as the history page and its record show it, without what differs per publish (ids, times)."""
    envelope = json.loads(event.envelope)
    return {
        "topic": event.topic.name,
        "type": event.event_type.name,
        "version": event.schema_version.version,
        "payload": event.payload,
        "envelope_payload": envelope["payload"],
        "envelope_names_the_row": envelope["id"] == event.envelope_id,
        "status": event.status,
        "stream_id_set": bool(event.stream_id),
        "published_at_set": event.published_at is not None,
        "created_at_set": event.created_at is not None,
        "source": event.source,
        "publisher_name": event.publisher_name,
    }


def _entry_view(entry: AuditEntry, ids: list[str]) -> dict[str, Any]:
    """An audit entry without its seq, time and hashes; event ids as their place in this publish."""
    details = json.loads(json.dumps(entry.details).replace(ids[0], "<first>"))
    if "events" in details:
        details["events"] = [ids.index(envelope_id) for envelope_id in details["events"]]
    details.pop("envelopes_sha256", None), details.pop("envelope_sha256", None)
    target = entry.target.replace(ids[0], "<first>")
    return {"action": entry.action, "actor": entry.actor_name, "target": target, "details": details}


def test_publishing_leaves_the_same_rows_and_audit_entries_under_both_stores(
    django_capture_on_commit_callbacks: Any,
) -> None:
    runs = {}
    for kind in KINDS:
        with override_settings(BUS_STORE=kind):
            runs[kind] = _published((1, 2, 3), django_capture_on_commit_callbacks)

    assert runs["sql"] == runs["orm"]
    assert [event["status"] for event in runs["sql"]["events"]] == [EventStatus.PUBLISHED] * 3
    assert runs["sql"]["chain_intact"]


def test_the_active_version_lookup_answers_the_same_for_known_disabled_and_unknown_types() -> None:
    version = schema_version_active(topic="tax-policy", event_type="tax_policy.updated")
    asked = [("tax-policy", "tax_policy.updated"), ("tax-policy", "no_such.type"), ("no.such-topic", "x")]
    before = _under_each_store(lambda: [store().version_active_row(topic, kind) for topic, kind in asked])
    SchemaVersion.objects.filter(pk=version.pk).update(state="disabled")
    after = _under_each_store(lambda: store().version_active_row("tax-policy", "tax_policy.updated"))

    assert before["sql"] == before["orm"]
    assert before["sql"][0] is not None
    assert before["sql"][0].version_id == version.pk
    assert before["sql"][1:] == [None, None]
    assert after["sql"] == after["orm"]


def test_the_taps_lookup_of_recorded_envelopes_answers_the_same() -> None:
    ids = {publish_deduction(d).envelope_id for d in (10, 20)}
    answers = _under_each_store(lambda: store().events_recorded({*ids, "not-an-id"}))

    assert answers["sql"] == answers["orm"]
    assert set(answers["sql"]) == ids


def test_both_stores_read_the_chain_alike_and_find_the_same_edit() -> None:
    for deduction in range(5):
        publish_deduction(deduction)
    pages = _under_each_store(lambda: _chain_read())
    assert _chain_values(pages["sql"]) == _chain_values(pages["orm"])

    victim = AuditEntry.objects.order_by("-seq")[2]
    with _append_only_trigger_disabled(), connection.cursor() as cursor:
        cursor.execute("UPDATE busapp_auditentry SET target = %s WHERE seq = %s", ["event:forged", victim.seq])
    reports = _under_each_store(lambda: audit_verify(checked_by="test"))

    assert reports["sql"].broken_seq == reports["orm"].broken_seq == victim.seq
    assert reports["sql"].problem == reports["orm"].problem
    assert "was changed after it was written" in reports["sql"].problem


def _chain_read() -> list[Any]:
    """Every audit entry through the store's chain pages."""
    head_seq, _, _ = store().audit_head_snapshot()
    with store().audit_chain_pages(0, head_seq) as pages:
        return [row for page in pages for row in page]


def _chain_values(rows: list[Any]) -> list[tuple[Any, ...]]:
    """Chain rows with their texts read back: the same entries whatever text format each store gave."""
    return [
        (seq, dt.datetime.fromisoformat(time_text), actor, action, target, json.loads(details), prev_hash, digest)
        for seq, time_text, actor, action, target, details, prev_hash, digest in rows
    ]


def test_the_chain_head_moves_only_from_where_the_caller_saw_it() -> None:
    publish_deduction(1)
    for kind in KINDS:
        with override_settings(BUS_STORE=kind), transaction.atomic():
            seq, digest = store().audit_head_lock()
            assert not store().audit_head_move((seq + 1, "f" * 64), (seq - 1, digest))
            assert store().audit_head_move((seq + 1, "f" * 64), (seq, digest))
            assert store().audit_head_snapshot()[:2] == (seq + 1, "f" * 64)
            transaction.set_rollback(True)


def test_rows_no_audit_entry_names_are_found_alike() -> None:
    publish_deduction(1)
    event_publish_batch(topic="tax-policy", items=[{"type": "tax_policy.updated", "payload": {"x": 1}}], actor="t")
    version = schema_version_active(topic="tax-policy", event_type="tax_policy.updated")
    forged = event_build(version=version, payload={"standard_deduction": 7}, actor="m", source=Source.CLI)
    forged.save()

    found = _under_each_store(lambda: list(store().events_unvouched()))

    assert found["sql"] == found["orm"]
    assert [envelope_id for envelope_id, _, _ in found["sql"]] == [forged.envelope_id]


def test_exports_read_the_same_lines_through_both_stores() -> None:
    for deduction in range(3):
        publish_deduction(deduction)
    newest = Event.objects.order_by("-timestamp", "-id").values_list("timestamp", "id").first()

    def exported() -> tuple[list[str], list[str]]:
        events = list(export_lines(Event.objects.all(), "ndjson", newest=newest))
        return events, list(audit_export_lines(AuditEntry.objects.all(), "csv"))

    lines = _under_each_store(exported)
    assert lines["sql"] == lines["orm"]
    assert len("".join(lines["sql"][0]).splitlines()) == 3


def test_the_write_check_passes_on_a_writable_database_under_both_stores() -> None:
    answers = _under_each_store(lambda: store().write_check(Event, wait_seconds=1.0))
    assert answers == {"sql": None, "orm": None}


def _unsaved_event(deduction: int) -> Event:
    """An event built for the active tax-policy version, not yet written."""
    version = schema_version_active(topic="tax-policy", event_type="tax_policy.updated")
    return event_build(version=version, payload={"standard_deduction": deduction}, actor="t", source=Source.CLI)


def _entry_after(head: tuple[int, str], target: str) -> AuditEntry:
    """An audit entry that follows ``head`` in the chain."""
    record = AuditRecord(AuditAction.EVENT_PUBLISH, target, {})
    return _chain_entries(head, timezone.now(), None, "t", [record])[0]


def test_a_write_from_a_stale_head_writes_nothing_and_one_from_the_head_writes_everything() -> None:
    publish_deduction(1)
    for kind in KINDS:
        with override_settings(BUS_STORE=kind):
            seq, digest = store().audit_head_snapshot()[:2]
            stale_event, stale_entry = _unsaved_event(2), _entry_after((seq - 1, "0" * 64), "event:stale")
            assert not store().chain_write([stale_event], [stale_entry], (seq - 1, "0" * 64))
            event, entry = _unsaved_event(3), _entry_after((seq, digest), "event:fresh")
            assert store().chain_write([event], [entry], (seq, digest))

            assert not Event.objects.filter(envelope_id=stale_event.envelope_id).exists()
            assert not AuditEntry.objects.filter(target="event:stale").exists()
            assert Event.objects.get(pk=event.pk).envelope_id == event.envelope_id
            assert AuditEntry.objects.get(pk=entry.pk).seq == seq + 1
            assert store().audit_head_snapshot()[:2] == (seq + 1, entry.hash)


def test_a_publish_after_another_process_moved_the_head_still_chains_its_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publish_deduction(1)
    for kind in KINDS:
        with override_settings(BUS_STORE=kind):
            # What this process remembers is behind: another process appended since.
            monkeypatch.setitem(audit._remembered_heads, audit._database_key(), (1, "0" * 64))
            event = publish_deduction(5)
            assert AuditEntry.objects.filter(target=f"event:{event.envelope_id}").count() == 1
    assert audit_verify(checked_by="test").intact


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's synchronous_commit")
@pytest.mark.django_db(transaction=True)
def test_the_published_mark_skips_the_flush_for_its_own_statement_only(demo_committed: None) -> None:
    assert not connection.in_atomic_block  # so the event is written, sent and marked as in production
    event = publish_deduction(7)
    assert Event.objects.get(pk=event.pk).status == EventStatus.PUBLISHED
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone() == ("on",)


@pytest.mark.django_db(transaction=True)
def test_a_row_estimate_is_the_planners_on_postgresql_and_none_where_there_is_none(demo_committed: None) -> None:
    event_publish_batch(
        topic="tax-policy",
        items=[{"type": "tax_policy.updated", "payload": {"standard_deduction": n}} for n in range(300)],
        actor="test",
    )
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")  # what autovacuum does in time, for committed rows
    events = events_filtered(HistoryFilter(topic="tax-policy"), topics=None)

    estimates = _under_each_store(lambda: store().rows_estimate(events))

    assert estimates["orm"] is None
    if connection.vendor == "postgresql":
        assert estimates["sql"] is not None
        assert 150 <= estimates["sql"] <= 600  # an estimate: near the 300 there are
    else:
        assert estimates["sql"] is None
