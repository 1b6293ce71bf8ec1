"""The history check (``verify_audit_log --events``): every history row against what the audit log vouches for.

Each publish wrote the sha256 of the envelope it accepted into its audit entry (one entry
per event, or one per batch over all its envelopes), and the chain check proves those
entries unchanged. Here every history row is read again, a page at a time:

- **edited**: its envelope no longer hashes to its entry's digest, or its id, type or
  payload columns (what the history pages show) no longer say what its envelope says;
- **added**: no audit entry names it;
- **missing**: an audit entry says it was accepted, and its row is gone.

The app never updates or deletes a history row, so any finding is a change made around it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import CharField, Exists, OuterRef, Subquery, Value
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Concat, Substr

from busapp.models import AuditEntry, Event
from busapp.selectors import batch_vouched, envelope_vouched
from busapp.store import BATCH_VOUCHING_ACTIONS as BATCH_ACTIONS
from busapp.store import VOUCHING_ACTIONS as SINGLE_ACTIONS
from busapp.store import store

_CHUNK = 2_000
_BATCH_IDS_SHOWN = 10


@dataclass(frozen=True)
class Finding:
    """One history row (or a batch's rows) that the audit log no longer vouches for, and why."""

    kind: str  # "edited", "added" or "missing"
    subject: str  # "event <id>", or a batch's audit entry
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.subject}: {self.detail}"


@dataclass
class EventsReport:
    """What the check read and found (each finding was handed to the caller as it was found)."""

    rows: int = 0
    batches: int = 0
    without_digest: int = 0  # rows whose audit entry is older than digests: vouched for by name only
    found: dict[str, int] = field(default_factory=lambda: {"edited": 0, "added": 0, "missing": 0})

    @property
    def intact(self) -> bool:
        """True when nothing was edited, added or removed."""
        return not any(self.found.values())


def events_verify(*, on_finding: Callable[[Finding], None]) -> EventsReport:
    """Re-hash every history row against its audit entry's digest; hand each finding over as it is found.

    Streamed: rows and entries are read a page at a time, so a million events never sit in memory.
    """
    report = EventsReport()

    def found(finding: Finding) -> None:
        report.found[finding.kind] += 1
        on_finding(finding)

    _rows_check(report, found)
    _batches_check(report, found)
    _entries_without_rows(found)
    for envelope_id, topic, recorded_at in store().events_unvouched():
        found(Finding("added", f"event {envelope_id}", f"on {topic}, recorded {recorded_at}: no audit entry names it"))
    return report


def _rows_check(report: EventsReport, found: Callable[[Finding], None]) -> None:
    """Each row against its envelope, and (when it has one) against the digest of its own audit entry."""
    own_entry = AuditEntry.objects.filter(
        target=Concat(Value("event:"), OuterRef("envelope_id"), output_field=CharField()), action__in=SINGLE_ACTIONS
    ).order_by("seq")
    rows = (
        Event.objects.order_by("pk")
        .annotate(
            entry_seq=Subquery(own_entry.values("seq")[:1]),
            entry_digest=Subquery(
                own_entry.annotate(digest=KeyTextTransform("envelope_sha256", "details")).values("digest")[:1]
            ),
        )
        .values_list("envelope_id", "envelope", "payload", "event_type__name", "entry_seq", "entry_digest")
    )
    for envelope_id, envelope, payload, type_name, seq, digest in rows.iterator(chunk_size=_CHUNK):
        report.rows += 1
        problems = _columns_differ(envelope_id, envelope, payload, type_name)
        if seq is not None:
            vouched = envelope_vouched(envelope, {"envelope_sha256": digest} if digest else {})
            if vouched is None:
                report.without_digest += 1
            elif not vouched:
                problems.insert(0, f"its envelope no longer hashes to the digest audit entry #{seq} holds")
        if problems:
            found(Finding("edited", f"event {envelope_id}", "; ".join(problems)))


def _columns_differ(envelope_id: str, envelope: str, payload: Any, type_name: str) -> list[str]:
    """What the row's columns say that its envelope does not (the pages show the columns)."""
    try:
        sent = json.loads(envelope)
    except ValueError:
        return ["its envelope is no longer JSON"]
    if not isinstance(sent, dict):
        return ["its envelope is no longer a JSON object"]
    differs = [
        name
        for name, column, in_envelope in (
            ("id", envelope_id, sent.get("id")),
            ("type", type_name, sent.get("type")),
            ("payload", payload, sent.get("payload")),
        )
        if not _same_json(column, in_envelope)
    ]
    return [f"its {name} column no longer matches its envelope" for name in differs]


def _same_json(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (PostgreSQL's jsonb writes 1e2 as 100), but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[key], b[key]) for key in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def _batches_check(report: EventsReport, found: Callable[[Finding], None]) -> None:
    """Each batch entry's digest against its events' envelopes; each of its events that is gone."""
    entries = AuditEntry.objects.filter(action__in=BATCH_ACTIONS).order_by("seq")
    for seq, action, target, details in entries.values_list("seq", "action", "target", "details").iterator(100):
        report.batches += 1
        check = batch_vouched(details)
        for envelope_id in check.missing:
            detail = f"audit entry #{seq} ({action} {target}) says it was accepted; its history row is gone"
            found(Finding("missing", f"event {envelope_id}", detail))
        if not check.missing and not check.intact:
            ids = details.get("events", [])
            more = len(ids) - _BATCH_IDS_SHOWN
            shown = ", ".join(ids[:_BATCH_IDS_SHOWN]) + (f" and {more} more" if more > 0 else "")
            detail = (
                f"their envelopes no longer hash to the digest it holds: one or more of its {len(ids)} events "
                f"was edited ({shown})"
            )
            found(Finding("edited", f"the events of audit entry #{seq} ({action} {target})", detail))


def _entries_without_rows(found: Callable[[Finding], None]) -> None:
    """Each event's own audit entry whose history row is gone."""
    row = Event.objects.filter(envelope_id=Substr(OuterRef("target"), len("event:") + 1))
    gone = (
        AuditEntry.objects.filter(action__in=SINGLE_ACTIONS, target__startswith="event:")
        .filter(~Exists(row))
        .order_by("seq")
        .values_list("seq", "action", "target")
    )
    for seq, action, target in gone.iterator(chunk_size=_CHUNK):
        detail = f"audit entry #{seq} ({action}) says it was accepted; its history row is gone"
        found(Finding("missing", f"event {target.removeprefix('event:')}", detail))
