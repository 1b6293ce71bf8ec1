"""The store in plain Django: the oracle the raw-SQL stores are tested against (``BUS_STORE=orm``).

Every method here says the same thing as its raw-SQL twin in the ORM's words, without
regard for speed; tests/test_store.py runs both and compares what they leave behind.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.db import transaction
from django.db.models import Max, Model, QuerySet, TextField
from django.db.models.functions import Cast

from busapp.models import AuditEntry, AuditHead, Event, EventStatus, SchemaVersion
from busapp.store.base import (
    BATCH_VOUCHING_ACTIONS,
    VOUCHING_ACTIONS,
    ActiveVersionRow,
    ChainRow,
    RecordedEvent,
    chain_write_in_steps,
)

_PAGE_ROWS = 2_000


class OrmStore:
    """The store through Django's ORM alone."""

    tidies = False

    def rows_insert(self, objs: Sequence[Model]) -> None:
        """``bulk_create``, which sets the keys on both databases."""
        if objs:
            type(objs[0])._default_manager.bulk_create(objs)

    def events_mark_published(self, events: Sequence[Event], now: dt.datetime) -> None:
        """``bulk_update`` of the mark's columns, in one transaction."""
        for event in events:
            event.status, event.published_at, event.last_error = EventStatus.PUBLISHED, now, ""
        with transaction.atomic():
            Event.objects.bulk_update(events, ["status", "stream_id", "published_at", "last_error"])

    def audit_head_lock(self) -> tuple[int, str]:
        """``select_for_update`` of the head, created first if missing."""
        AuditHead.objects.get_or_create(pk=1)
        head = AuditHead.objects.select_for_update().get(pk=1)
        return head.seq, head.hash

    def audit_head_move(self, newest: tuple[int, str], expected: tuple[int, str] | None) -> bool:
        """A filtered ``update``."""
        heads = AuditHead.objects.filter(pk=1)
        if expected is not None:
            heads = heads.filter(seq=expected[0], hash=expected[1])
        return heads.update(seq=newest[0], hash=newest[1]) == 1

    def chain_write(self, objs: Sequence[Model], entries: Sequence[AuditEntry], expected: tuple[int, str]) -> bool:
        """The head's filtered update, then ``bulk_create`` of the rows and entries, in one transaction."""
        return chain_write_in_steps(self, objs, entries, expected)

    def audit_head_snapshot(self) -> tuple[int, str, int]:
        """Two reads in one transaction."""
        with transaction.atomic():
            head = AuditHead.objects.filter(pk=1).values_list("seq", "hash").first() or (0, "")
            newest = AuditEntry.objects.aggregate(newest=Max("seq"))["newest"] or 0
        return int(head[0]), str(head[1]), int(newest)

    @contextmanager
    def audit_chain_pages(self, after_seq: int, through_seq: int) -> Iterator[Iterator[list[ChainRow]]]:
        """The entries as model instances, written out as text the way the chain check reads rows."""
        entries = AuditEntry.objects.filter(seq__gt=after_seq, seq__lte=through_seq).order_by("seq")
        with transaction.atomic():
            yield _pages(_chain_row(entry) for entry in entries.iterator(chunk_size=_PAGE_ROWS))

    def version_active_row(self, topic: str, event_type: str) -> ActiveVersionRow | None:
        """The newest version not disabled, as ``SchemaVersion.objects.active()`` defines it."""
        row = (
            SchemaVersion.objects.active()
            .filter(event_type__topic__name=topic, event_type__name=event_type)
            .values_list(
                "id",
                "version",
                "fingerprint",
                "event_type_id",
                "event_type__topic_id",
                "event_type__topic__sensitive",
                "event_type__topic__stream_retention",
                "state",
            )
            .first()
        )
        return None if row is None else ActiveVersionRow(*row)

    def events_recorded(self, envelope_ids: set[str]) -> dict[str, RecordedEvent]:
        """One ``filter(envelope_id__in=...)``."""
        rows = Event.objects.filter(envelope_id__in=list(envelope_ids)).values_list(
            "envelope_id", "id", "status", "source", "publisher_name"
        )
        return {envelope_id: RecordedEvent(pk, status, source, name) for envelope_id, pk, status, source, name in rows}

    def rows_fetch(self, rows: QuerySet[Any]) -> list[tuple[Any, ...]]:
        """The query's rows through the ORM."""
        return list(rows)

    def rows_estimate(self, rows: QuerySet[Any]) -> int | None:
        """The ORM has no estimates."""
        return None

    def events_unvouched(self) -> Iterator[tuple[str, str, str]]:
        """Every history row, skipping the ids named by single entries and those in a batch entry's list."""
        named = set(
            AuditEntry.objects.filter(action__in=VOUCHING_ACTIONS, target__startswith="event:").values_list(
                "target", flat=True
            )
        )
        in_batches: set[str] = set()
        for details in AuditEntry.objects.filter(action__in=BATCH_VOUCHING_ACTIONS).values_list("details", flat=True):
            events = details.get("events") if isinstance(details, dict) else None
            in_batches.update(value for value in events or [] if isinstance(value, str))
        rows = Event.objects.order_by("id").values_list("envelope_id", "topic__name", Cast("created_at", TextField()))
        for envelope_id, topic, recorded_at in rows.iterator(chunk_size=_PAGE_ROWS):
            if f"event:{envelope_id}" not in named and envelope_id not in in_batches:
                yield str(envelope_id), str(topic), str(recorded_at)

    def write_check(self, model: type[Model], *, wait_seconds: float) -> None:
        """A read in a transaction rolled back; it waits as long as the database's own timeout, not ``wait_seconds``."""
        with transaction.atomic():
            model._default_manager.exists()
            transaction.set_rollback(True)

    def tidy(self) -> None:
        """Nothing: the ORM has no upkeep of its own."""
        return None


def _chain_row(entry: AuditEntry) -> ChainRow:
    """An entry's stored values as the chain check reads rows: the time in UTC as text, details as JSON text."""
    time_text = entry.time.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    details = json.dumps(entry.details, ensure_ascii=False)
    return (entry.seq, time_text, entry.actor_name, entry.action, entry.target, details, entry.prev_hash, entry.hash)


def _pages(rows: Iterator[ChainRow]) -> Iterator[list[ChainRow]]:
    """Rows gathered into pages."""
    page: list[ChainRow] = []
    for row in rows:
        page.append(row)
        if len(page) == _PAGE_ROWS:
            yield page
            page = []
    if page:
        yield page
