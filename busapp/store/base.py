"""What the store does for the app (the ``Store`` protocol), and the values it hands back."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from django.db import transaction
from django.db.models import Model, QuerySet

from busapp.models import AuditAction, AuditEntry, Event

# An audit entry as the chain check reads it, every value as stored: seq, time as
# "YYYY-MM-DD HH:MM:SS[.ffffff]" in UTC, actor name, action, target, details as JSON text,
# prev_hash, hash.
ChainRow = tuple[int, str, str, str, str, str, str, str]
# An event is vouched for by its own audit entry (target ``event:<id>``) or by a batch's
# (its id in ``details.events``): a batch published, or one the tap recorded.
VOUCHING_ACTIONS = (AuditAction.EVENT_PUBLISH, AuditAction.EVENT_RECORD)
BATCH_VOUCHING_ACTIONS = (AuditAction.EVENT_PUBLISH_BATCH, AuditAction.EVENT_RECORD_BATCH)


@dataclass(frozen=True)
class RecordedEvent:
    """What the tap needs of an event history already holds."""

    pk: int
    status: str
    source: str
    publisher: str


@dataclass(frozen=True)
class ActiveVersionRow:
    """The active schema version of a topic's event type, as one lookup reads it."""

    version_id: int
    version: int
    fingerprint: str
    event_type_id: int
    topic_id: int
    sensitive: bool
    stream_retention: int
    state: str


class Store(Protocol):
    """Every statement the app runs other than through plain Django: inserts, marks, the chain, history reads."""

    tidies: bool  # whether the bus worker should call ``tidy`` every second

    def rows_insert(self, objs: Sequence[Model]) -> None:
        """INSERT new objects of one model and set their primary keys."""

    def events_mark_published(self, events: Sequence[Event], now: dt.datetime) -> None:
        """Record that events went on the bus: status, stream id (set on each event), published at ``now``."""

    def audit_head_lock(self) -> tuple[int, str]:
        """The chain head (newest seq and hash), locked until the caller's transaction ends; created if missing."""

    def audit_head_move(self, newest: tuple[int, str], expected: tuple[int, str] | None) -> bool:
        """Move the head to ``newest``; with ``expected``, only if it is still there. True if it moved."""

    def chain_write(self, objs: Sequence[Model], entries: Sequence[AuditEntry], expected: tuple[int, str]) -> bool:
        """Insert rows of one model (maybe none) and their audit entries, moving the head from ``expected``.

        All of it, or nothing (False) when the head is no longer at ``expected``.
        """

    def audit_head_snapshot(self) -> tuple[int, str, int]:
        """The head's seq and hash and the newest entry's seq, read at one moment (0 and "" when empty)."""

    def audit_chain_pages(self, after_seq: int, through_seq: int) -> AbstractContextManager[Iterator[list[ChainRow]]]:
        """Entries ``after_seq + 1`` to ``through_seq`` in seq order, as stored, a page at a time."""

    def version_active_row(self, topic: str, event_type: str) -> ActiveVersionRow | None:
        """The newest version of a topic's event type that is not disabled, or None."""

    def events_recorded(self, envelope_ids: set[str]) -> dict[str, RecordedEvent]:
        """The events history holds among these envelope ids, by id."""

    def rows_fetch(self, rows: QuerySet[Any]) -> list[tuple[Any, ...]]:
        """A ``values_list`` query's rows as the database returns them (export: no per-value conversion)."""

    def rows_estimate(self, rows: QuerySet[Any]) -> int | None:
        """The query planner's estimate of how many rows a query returns; None where the database gives none."""

    def events_unvouched(self) -> Iterator[tuple[str, str, str]]:
        """(envelope id, topic, recorded at as text) of every history row no audit entry names, oldest first."""

    def write_check(self, model: type[Model], *, wait_seconds: float) -> None:
        """Raise ``DatabaseError`` unless the database would take a write to the model's table now."""

    def tidy(self) -> tuple[int, int] | None:
        """Periodic upkeep the bus worker runs (SQLite: a WAL checkpoint, frames held and copied); None if none."""


class _ChainSteps(Protocol):
    """What ``chain_write_in_steps`` needs of a store."""

    def rows_insert(self, objs: Sequence[Model]) -> None:
        """See ``Store``."""

    def audit_head_move(self, newest: tuple[int, str], expected: tuple[int, str] | None) -> bool:
        """See ``Store``."""


def chain_write_in_steps(
    store: _ChainSteps, objs: Sequence[Model], entries: Sequence[AuditEntry], expected: tuple[int, str]
) -> bool:
    """``Store.chain_write`` as three statements in one transaction: the head's conditional move first."""
    with transaction.atomic(savepoint=False):
        if not store.audit_head_move((entries[-1].seq, entries[-1].hash), expected):
            return False
        store.rows_insert(objs)
        store.rows_insert(entries)
    return True
