"""The tamper-evident audit log: entries appended in the caller's transaction, and the chain check."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.utils import timezone

from busapp.models import AuditEntry, AuditHead
from busapp.rows import rows_insert

GENESIS_HASH = "0" * 64

# The chain head this process wrote last, per database. Only a hint: a stale or
# rolled-back one makes the conditional head UPDATE match nothing, and the head is read.
_remembered_heads: dict[str, tuple[int, str]] = {}

# Who did something: a signed-in person, or a named non-person such as "cli:root" or "system:bus-worker".
Actor = User | str


@dataclass(frozen=True)
class AuditRecord:
    """One thing to write down: what was done, to what, with which details."""

    action: str
    target: str
    details: dict[str, Any]


def actor_parts(actor: Actor) -> tuple[User | None, str]:
    """Split an actor into the user row (if a person) and the name the log keeps."""
    if isinstance(actor, str):
        return None, actor
    return actor, actor.get_username()


def entry_hash(
    *, prev_hash: str, seq: int, time: dt.datetime, actor_name: str, action: str, target: str, details: Any
) -> str:
    """Return ``sha256(prev_hash + canonical JSON of the entry)``."""
    body = json.dumps(
        {
            "seq": seq,
            "time": time.astimezone(dt.UTC).isoformat(),
            "actor": actor_name,
            "action": action,
            "target": target,
            "details": details,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def audit_append(*, actor: Actor, records: Sequence[AuditRecord]) -> list[AuditEntry]:
    """Append entries to the chain inside the caller's transaction (so a failed write fails the action)."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit entries are written in the transaction of the change they record")
    if not records:
        return []
    user, actor_name = actor_parts(actor)
    now = timezone.now()
    # Most appends come from the process that wrote the previous link, so the head it
    # remembers is tried first: the conditional UPDATE both checks and moves it, which
    # saves reading it. Another writer moved it in between: read it, locked, and redo.
    remembered = _remembered_heads.get(_database_key())
    entries = _chain_entries(remembered, now, user, actor_name, records) if remembered else []
    if not entries or not _head_advance(remembered, entries[-1]):
        entries = _chain_entries(_head_locked(), now, user, actor_name, records)
        _head_advance(None, entries[-1])
    rows_insert(entries)
    _remembered_heads[_database_key()] = (entries[-1].seq, entries[-1].hash)
    return entries


def _database_key() -> str:
    """Which database the chain lives in (tests and benchmarks switch databases in one process)."""
    return f"{connection.vendor}:{connection.settings_dict['NAME']}"


def _chain_entries(
    head: tuple[int, str], now: dt.datetime, user: User | None, actor_name: str, records: Sequence[AuditRecord]
) -> list[AuditEntry]:
    """The entries that follow ``head`` (seq, hash), each hashed onto the one before."""
    seq, prev_hash = head
    entries = []
    for record in records:
        seq += 1
        digest = entry_hash(
            prev_hash=prev_hash,
            seq=seq,
            time=now,
            actor_name=actor_name,
            action=record.action,
            target=record.target,
            details=record.details,
        )
        entries.append(
            AuditEntry(
                seq=seq,
                time=now,
                actor=user,
                actor_name=actor_name,
                action=record.action,
                target=record.target,
                details=record.details,
                prev_hash=prev_hash,
                hash=digest,
            )
        )
        prev_hash = digest
    return entries


def _head_advance(expected: tuple[int, str] | None, newest: AuditEntry) -> bool:
    """Move the head to ``newest``; with ``expected``, only if the head is still there (True if it moved)."""
    table = AuditHead._meta.db_table
    with connection.cursor() as cursor:
        if expected is None:  # the head is locked by this transaction already
            cursor.execute(f"UPDATE {table} SET seq = %s, hash = %s WHERE id = 1", [newest.seq, newest.hash])  # noqa: S608
            return True
        cursor.execute(
            f"UPDATE {table} SET seq = %s, hash = %s WHERE id = 1 AND seq = %s AND hash = %s",  # noqa: S608
            [newest.seq, newest.hash, *expected],
        )
        return cursor.rowcount == 1


def _head_locked() -> tuple[int, str]:
    """The chain head (newest seq and hash), locked until the caller's transaction ends.

    ``FOR UPDATE`` on the one head row serializes writers on PostgreSQL; on SQLite the
    IMMEDIATE transaction already holds the database's write lock. Plain SQL because
    every publish passes here.
    """
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    query = f"SELECT seq, hash FROM {AuditHead._meta.db_table} WHERE id = 1{lock}"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(query)
        row = cursor.fetchone()
        if row is None:
            # The first entry ever: create the head (a second writer waits on its key, then
            # finds it), and lock it like any other time.
            AuditHead.objects.get_or_create(pk=1)
            cursor.execute(query)
            row = cursor.fetchone()
    return int(row[0]), str(row[1])


def audit_record(*, actor: Actor, action: str, target: str, details: dict[str, Any] | None = None) -> AuditEntry:
    """Append one entry; see ``audit_append``."""
    return audit_append(actor=actor, records=[AuditRecord(action, target, details or {})])[0]


@dataclass(frozen=True)
class ChainReport:
    """What ``audit_verify`` found: how far the chain holds, and the first broken link if any."""

    checked: int
    last_seq: int
    last_hash: str
    broken_seq: int | None = None
    problem: str = ""

    @property
    def intact(self) -> bool:
        """True when every link checked out."""
        return self.broken_seq is None


def _chain_rows() -> Iterable[tuple[Any, ...]]:
    """Every entry's hashed fields in chain order, streamed in chunks."""
    return (
        AuditEntry.objects.order_by("seq")
        .values_list("seq", "time", "actor_name", "action", "target", "details", "prev_hash", "hash")
        .iterator(chunk_size=10_000)
    )


def audit_verify() -> ChainReport:
    """Recompute every link of the chain and name the first one that does not hold."""
    checked, expected_seq, prev_hash = 0, 1, GENESIS_HASH
    for seq, time, actor_name, action, target, details, stored_prev, stored_hash in _chain_rows():
        if seq != expected_seq:
            return ChainReport(checked, expected_seq - 1, prev_hash, expected_seq, f"entry #{expected_seq} is missing")
        if stored_prev != prev_hash:
            problem = f"entry #{seq} does not link to entry #{seq - 1}: an entry before it was changed or removed"
            return ChainReport(checked, seq - 1, prev_hash, seq, problem)
        digest = entry_hash(
            prev_hash=prev_hash,
            seq=seq,
            time=time,
            actor_name=actor_name,
            action=action,
            target=target,
            details=details,
        )
        if digest != stored_hash:
            problem = f"entry #{seq} ({action} {target}) was changed after it was written: its hash does not match"
            return ChainReport(checked, seq - 1, prev_hash, seq, problem)
        checked, expected_seq, prev_hash = checked + 1, seq + 1, stored_hash
    head = AuditHead.objects.filter(pk=1).first()
    head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS_HASH)
    if (head_seq, head_hash) != (expected_seq - 1, prev_hash):
        problem = (
            f"the chain head records entry #{head_seq} but the log ends at entry #{expected_seq - 1}: "
            "the newest entries were removed or changed"
        )
        return ChainReport(checked, expected_seq - 1, prev_hash, expected_seq, problem)
    return ChainReport(checked, expected_seq - 1, prev_hash)
