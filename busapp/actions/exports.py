"""Exports of the history and the audit log: each bounded where it begins, and written down before it streams."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import QuerySet

from busapp.audit import audit_record
from busapp.history import (
    HistoryFilter,
    audit_export_lines,
    audit_filtered,
    events_filtered,
    events_through,
    export_lines,
    export_newest,
)
from busapp.models import AuditAction, AuditHead, Topic


@dataclass(frozen=True)
class Export:
    """An export under way: its lines, read a chunk at a time as they are sent, and how many rows it holds."""

    lines: Iterator[str]
    rows: int


def events_export_start(
    *, actor: User, fmt: str, history_filter: HistoryFilter, topics: QuerySet[Topic] | None, base_url: str = ""
) -> Export:
    """The filtered history up to its newest event now, with an ``events.export`` entry naming filter and rows."""
    events = events_filtered(history_filter, topics=topics)
    newest = export_newest(events)
    rows = events_through(events, newest).count()
    with transaction.atomic():
        audit_record(
            actor=actor,
            action=AuditAction.EVENTS_EXPORT,
            target="events",
            details={"format": fmt, "filter": history_filter.as_details(), "rows": rows},
        )
    return Export(export_lines(events, fmt, newest=newest, base_url=base_url), rows)


def audit_export_start(*, actor: User, fmt: str, filters: dict[str, Any]) -> Export:
    """The filtered audit log up to its head now, with an ``audit.export`` entry (after the bound: not in the file)."""
    with transaction.atomic():
        newest = AuditHead.objects.filter(pk=1).values_list("seq", flat=True).first() or 0
        entries = audit_filtered(**filters).filter(seq__lte=newest)
        rows = entries.count()
        said = {name: str(value) for name, value in filters.items() if value}
        audit_record(
            actor=actor,
            action=AuditAction.AUDIT_EXPORT,
            target="audit",
            details={"format": fmt, "filter": said, "rows": rows},
        )
    return Export(audit_export_lines(entries, fmt), rows)
