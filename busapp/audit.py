"""The tamper-evident audit log: entries appended in the caller's transaction, and the chain check."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import multiprocessing
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from time import perf_counter
from typing import Any

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import Model
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from busapp.models import AuditAction, AuditCheck, AuditEntry
from busapp.store import ChainRow, store
from busapp.store.driver import connection_own_after_fork
from busapp.store.encoding import canonical_json_encoder

GENESIS_HASH = "0" * 64

logger = logging.getLogger(__name__)

# The chain head this process wrote last, per database. Only a hint: a stale or
# rolled-back one makes the conditional head UPDATE match nothing, and the head is read.
_remembered_heads: dict[str, tuple[int, str]] = {}

# Who did something: a signed-in person, or a named non-person such as "cli:root" or "system:bus-worker".
Actor = User | str


@dataclass(frozen=True)
class AuditRecord:
    """One thing to write down: what was done, to what, with which details."""

    action: AuditAction
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


_AUDIT_ACTIONS = frozenset(AuditAction.values)


def audit_append(*, actor: Actor, records: Sequence[AuditRecord], rows: Sequence[Model] = ()) -> list[AuditEntry]:
    """Append entries to the chain, with ``rows`` (new objects of one model) written alongside: all or nothing.

    Without ``rows`` the entries go into the caller's transaction (so a failed write fails the
    action), and there must be one. With ``rows`` the change and its entries are one step of
    their own (on PostgreSQL one statement), inside the caller's transaction if there is one.
    """
    if not rows and not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit entries are written in the transaction of the change they record")
    if not records:
        if rows:
            raise ValueError("rows are written with the audit entries that record them: give at least one")
        return []
    unnamed = [record.action for record in records if record.action not in _AUDIT_ACTIONS]
    if unnamed:
        raise ValueError(f"audit action {unnamed[0]!r} is not one of AuditAction's: name it there first")
    user, actor_name = actor_parts(actor)
    now = timezone.now()
    chain = store()
    # Most appends come from the process that wrote the previous link, so the head it
    # remembers is tried first: the write moves it only from there, which saves reading it.
    # Another writer moved it in between: read it, locked, and write after it.
    database = _database_key()
    remembered = _remembered_heads.get(database)
    if remembered is not None:
        entries = _chain_entries(remembered, now, user, actor_name, records)
        if chain.chain_write(rows, entries, remembered):
            _remembered_heads[database] = (entries[-1].seq, entries[-1].hash)
            return entries
    with transaction.atomic(savepoint=False):
        entries = _chain_entries(chain.audit_head_lock(), now, user, actor_name, records)
        chain.audit_head_move((entries[-1].seq, entries[-1].hash), None)
        chain.rows_insert(rows)
        chain.rows_insert(entries)
    _remembered_heads[database] = (entries[-1].seq, entries[-1].hash)
    return entries


def _database_key() -> str:
    """Which database the chain lives in (tests and benchmarks switch databases in one process)."""
    settings = connection.settings_dict
    return f"{settings['ENGINE']}:{settings['NAME']}"


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


def audit_record(
    *, actor: Actor, action: AuditAction, target: str, details: dict[str, Any] | None = None
) -> AuditEntry:
    """Append one entry; see ``audit_append``."""
    return audit_append(actor=actor, records=[AuditRecord(action, target, details or {})])[0]


# The chain check. It reads the entries as raw text through one cursor, rebuilds each
# canonical body from strings (only ``details`` goes through the JSON encoder), and splits
# a long chain between this process and a forked one. Each entry's hash is recomputed
# from its own stored ``prev_hash``, so the stretches can be checked apart and joined
# where they meet.

# A run over at least this many entries is split in two halves, one per process.
PARALLEL_FROM = 50_000
_PAGE_ROWS = 5_000
# What the canonical JSON does to a string under ``ensure_ascii=False`` (json's own C function).
_json_string = json.encoder.encode_basestring
# Reads JSON from the start of a text, without json.loads' whitespace handling around it.
_decode_json = json.JSONDecoder().raw_decode


_canonical_json = canonical_json_encoder()


@dataclass(frozen=True)
class ChainReport:
    """What ``audit_verify`` found: where it started, how far the chain holds, the first broken link if any."""

    checked: int
    last_seq: int
    last_hash: str
    broken_seq: int | None = None
    problem: str = ""
    from_seq: int = 1
    seconds: float = 0.0

    @property
    def intact(self) -> bool:
        """True when every link checked out."""
        return self.broken_seq is None

    @property
    def entries_per_second(self) -> float:
        """How fast this run recomputed entries."""
        return self.checked / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _Stretch:
    """What one stretch of the chain held; ``ends_early`` when its rows ran out before its last seq."""

    checked: int
    last_seq: int
    last_hash: str
    first_seq: int | None = None  # the first entry found in the stretch
    first_prev_hash: str = ""  # and the link it records
    broken_seq: int | None = None
    problem: str = ""
    ends_early: bool = False


def audit_verify(*, resume: bool = False, checked_by: str = "system:audit-check") -> ChainReport:
    """Recompute the chain's links, name the first one that does not hold, and record the run as an ``AuditCheck``.

    With ``resume`` the run starts after the newest intact check, once the entry it ended at
    is confirmed to still carry the hash it found; otherwise it starts at entry #1.
    """
    started = perf_counter()
    checkpoint = AuditCheck.objects.filter(broken_seq__isnull=True).first()
    checkpoint_holds = checkpoint is None or _checkpoint_holds(checkpoint)
    head_seq, head_hash, newest_seq = store().audit_head_snapshot()
    head_hash = head_hash or GENESIS_HASH
    after_seq, after_hash = 0, GENESIS_HASH
    if resume and checkpoint is not None and checkpoint_holds and checkpoint.through_seq <= head_seq:
        after_seq, after_hash = checkpoint.through_seq, checkpoint.through_hash
    stretch = _chain_check(after_seq=after_seq, after_hash=after_hash, through_seq=head_seq)
    report = _report(stretch, from_seq=after_seq + 1, head=(head_seq, head_hash), newest_seq=newest_seq)
    if report.intact and checkpoint is not None and not checkpoint_holds:
        report = _checkpoint_lost_report(report, checkpoint)
    report = replace(report, seconds=perf_counter() - started)
    _check_record(report, checked_by)
    return report


def _checkpoint_holds(check: AuditCheck) -> bool:
    """True if the entry an earlier check ended at still carries the hash that check found."""
    if check.through_seq == 0:
        return check.through_hash == GENESIS_HASH
    stored = AuditEntry.objects.filter(seq=check.through_seq).values_list("hash", flat=True).first()
    return stored == check.through_hash


def _chain_check(*, after_seq: int, after_hash: str, through_seq: int) -> _Stretch:
    """Check entries ``after_seq + 1`` to ``through_seq``; a long run in two processes, one half each."""
    count = through_seq - after_seq
    if count < PARALLEL_FROM or not _can_fork():
        return _stretch_check(after_seq=after_seq, after_hash=after_hash, through_seq=through_seq)
    middle = after_seq + count // 2
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
        later = pool.submit(_stretch_check_forked, dict(connection.settings_dict), middle, through_seq)
        first = _stretch_check(after_seq=after_seq, after_hash=after_hash, through_seq=middle)
        try:
            second = later.result()
        except Exception:  # it could not connect, or was killed: check its half here
            logger.exception("audit check: the forked checker failed; checking #%d on here", middle + 1)
            second = _stretch_check(after_seq=middle, after_hash=None, through_seq=through_seq)
    return _stretches_joined(first, second)


def _can_fork() -> bool:
    """True if a forked process can check a stretch: it sees only committed entries, on a database it can open."""
    in_memory = getattr(connection, "is_in_memory_db", lambda: False)()
    return (
        not connection.in_atomic_block
        and not in_memory
        and "fork" in multiprocessing.get_all_start_methods()
        and (os.cpu_count() or 1) > 1
        and _single_threaded()
    )


def _single_threaded() -> bool:
    """True outside servers and thread pools: a fork copies only the calling thread, and any lock another one held."""
    return threading.active_count() == 1


def _stretch_check_forked(settings_dict: dict[str, Any], after_seq: int, through_seq: int) -> _Stretch:
    """Check a stretch in a forked process, on a connection of its own; its first link is checked by the parent."""
    with connection_own_after_fork(settings_dict):
        return _stretch_check(after_seq=after_seq, after_hash=None, through_seq=through_seq)


def _stretch_check(*, after_seq: int, after_hash: str | None, through_seq: int) -> _Stretch:
    """Check entries ``after_seq + 1`` to ``through_seq`` (without ``after_hash``, the caller checks the first link)."""
    expected, prev_hash, checked = after_seq + 1, after_hash, 0
    first_seq, first_prev_hash = None, ""
    with store().audit_chain_pages(after_seq, through_seq) as pages:
        for page in pages:
            for row in page:
                seq, _, _, action, target, _, stored_prev, stored_hash = row
                if first_seq is None:
                    first_seq, first_prev_hash = seq, stored_prev
                if seq != expected:
                    problem = _missing_problem(expected, seq)
                    return _Stretch(
                        checked, expected - 1, prev_hash or "", first_seq, first_prev_hash, expected, problem
                    )
                if prev_hash is not None and stored_prev != prev_hash:
                    problem = _unlinked_problem(seq)
                    return _Stretch(checked, seq - 1, prev_hash, first_seq, first_prev_hash, seq, problem)
                if not _row_hash_holds(row) and _row_hash_as_django_reads(row) != stored_hash:
                    problem = _changed_problem(seq, action, target)
                    return _Stretch(checked, seq - 1, stored_prev, first_seq, first_prev_hash, seq, problem)
                expected, prev_hash, checked = seq + 1, stored_hash, checked + 1
    last_hash = prev_hash or ""
    if expected <= through_seq:  # the rows ran out: what comes next is for the caller to tell
        return _Stretch(checked, expected - 1, last_hash, first_seq, first_prev_hash, expected, ends_early=True)
    return _Stretch(checked, expected - 1, last_hash, first_seq, first_prev_hash)


def _row_hash_holds(row: tuple[Any, ...]) -> bool:
    """Whether a chain row (as ``Store.audit_chain_pages`` reads it) still hashes to its stored hash, read as text."""
    seq, time_text, actor_name, action, target, details_text, stored_prev, stored_hash = row
    iso_time = time_text[:10] + "T" + time_text[11:]
    if iso_time.endswith(".000000"):  # isoformat() leaves out a zero fraction
        iso_time = iso_time[:-7]
    try:
        details, end = _decode_json(details_text)
    except ValueError:
        end = -1
    if end != len(details_text):  # not JSON alone: read it the way Django does
        details = _details_as_django_reads(details_text)
    return bool(_row_hash(stored_prev, seq, iso_time + "+00:00", actor_name, action, target, details) == stored_hash)


def _row_hash(prev_hash: str, seq: int, iso_time: str, actor_name: str, action: str, target: str, details: Any) -> str:
    """``entry_hash`` of stored values: the body written key by key in sorted order, only ``details`` encoded."""
    body = (
        '{"action":'
        + _json_string(action)
        + ',"actor":'
        + _json_string(actor_name)
        + ',"details":'
        + _canonical_json(details)
        + ',"seq":'
        + str(seq)
        + ',"target":'
        + _json_string(target)
        + ',"time":"'
        + iso_time
        + '"}'
    )
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def _row_hash_as_django_reads(row: ChainRow) -> str | None:
    """The row's hash from the values the ORM would read (for a time stored in another format); None if unreadable."""
    seq, time_text, actor_name, action, target, details_text, stored_prev, _ = row
    try:
        when = parse_datetime(time_text)
    except ValueError:
        return None
    if when is None:
        return None
    if timezone.is_naive(when):
        when = timezone.make_aware(when, dt.UTC)
    return entry_hash(
        prev_hash=stored_prev,
        seq=seq,
        time=when,
        actor_name=actor_name,
        action=action,
        target=target,
        details=_details_as_django_reads(details_text),
    )


def _details_as_django_reads(text: str) -> Any:
    """Stored details as the JSONField reads them: the JSON value, or the text itself if it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _stretches_joined(first: _Stretch, second: _Stretch) -> _Stretch:
    """The chain over two adjoining stretches: the first one's break, else their link, else the second's break."""
    if first.ends_early and second.first_seq is not None:  # a gap where the stretches meet
        problem = _missing_problem(first.last_seq + 1, second.first_seq)
        return replace(first, problem=problem, ends_early=False)
    if first.broken_seq is not None:
        return first
    if second.first_seq == first.last_seq + 1 and second.first_prev_hash != first.last_hash:
        return replace(first, broken_seq=second.first_seq, problem=_unlinked_problem(second.first_seq))
    return replace(
        second,
        checked=first.checked + second.checked,
        last_hash=second.last_hash if second.last_seq > first.last_seq else first.last_hash,
        first_seq=first.first_seq,
        first_prev_hash=first.first_prev_hash,
    )


def _report(stretch: _Stretch, *, from_seq: int, head: tuple[int, str], newest_seq: int) -> ChainReport:
    """The run's report: the chain's first break, else whether the head matches the end of the log."""
    head_seq, head_hash = head
    report = ChainReport(stretch.checked, stretch.last_seq, stretch.last_hash, from_seq=from_seq)
    if stretch.ends_early:
        return replace(report, broken_seq=stretch.last_seq + 1, problem=_cut_short_problem(stretch.last_seq, head_seq))
    if stretch.broken_seq is not None:
        return replace(report, broken_seq=stretch.broken_seq, problem=stretch.problem)
    if head_seq > 0 and stretch.last_hash != head_hash:
        problem = (
            f"entry #{head_seq} does not carry the hash the chain head records for it: "
            "the newest entry or the head was rewritten"
        )
        return replace(
            report,
            checked=max(0, stretch.checked - 1),
            last_seq=head_seq - 1,
            last_hash=_stored_hash(head_seq - 1),
            broken_seq=head_seq,
            problem=problem,
        )
    if newest_seq > head_seq:
        head_records = f"the chain head (entry #{head_seq})" if head_seq else "the chain head, which records no entry"
        problem = (
            f"entry #{head_seq + 1} comes after {head_records}: "
            "entries were added without moving the head, or the head was moved back"
        )
        return replace(report, broken_seq=head_seq + 1, problem=problem)
    return report


def _checkpoint_lost_report(report: ChainReport, check: AuditCheck) -> ChainReport:
    """An intact chain that no longer holds what an earlier intact check found: it was cut back or rewritten."""
    when = f"{check.checked_at.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"
    if check.through_seq > report.last_seq:
        problem = (
            f"the check of {when} found the log intact through entry #{check.through_seq}, but it now ends "
            f"at entry #{report.last_seq}: entries were removed and the head moved back"
        )
        return replace(report, broken_seq=report.last_seq + 1, problem=problem)
    seq = check.through_seq
    problem = (
        f"entry #{seq} no longer carries the hash that the check of {when} found: "
        "the entries up to it were rewritten and hashed again"
    )
    return replace(
        report,
        checked=min(report.checked, seq - report.from_seq),
        last_seq=seq - 1,
        last_hash=_stored_hash(seq - 1),
        broken_seq=seq,
        problem=problem,
    )


def _stored_hash(seq: int) -> str:
    """The hash entry ``seq`` carries (the genesis hash before entry #1)."""
    if seq == 0:
        return GENESIS_HASH
    return AuditEntry.objects.filter(seq=seq).values_list("hash", flat=True).first() or ""


def _missing_problem(first_missing: int, next_found: int) -> str:
    """Entries absent from the middle of the log."""
    if next_found == first_missing + 1:
        return f"entry #{first_missing} is missing"
    return f"entries #{first_missing} to #{next_found - 1} are missing"


def _unlinked_problem(seq: int) -> str:
    """An entry whose ``prev_hash`` is not the hash of the entry before it."""
    if seq == 1:
        return "entry #1 does not start the chain: it records a previous entry where there is none"
    return (
        f"entry #{seq} does not link to entry #{seq - 1}: the hash it records for entry #{seq - 1} is not that "
        f"entry's hash, so entry #{seq - 1} was replaced or this entry's link was edited"
    )


def _changed_problem(seq: int, action: str, target: str) -> str:
    """An entry whose content no longer matches its hash."""
    return f"entry #{seq} ({action} {target}) was changed after it was written: its content no longer matches its hash"


def _cut_short_problem(last_seq: int, head_seq: int) -> str:
    """A log that ends before the entry the head records."""
    removed = f"#{head_seq}" if head_seq == last_seq + 1 else f"#{last_seq + 1} to #{head_seq}"
    return (
        f"the chain head records entry #{head_seq} but the log ends at entry #{last_seq}: "
        f"the newest entries were removed ({removed})"
    )


def _check_record(report: ChainReport, checked_by: str) -> None:
    """Write the run down as an ``AuditCheck``, in a transaction of its own (the checks are not the audit log)."""
    with transaction.atomic():
        AuditCheck.objects.create(
            checked_by=checked_by[:150],
            from_seq=report.from_seq,
            through_seq=report.last_seq,
            through_hash=report.last_hash,
            checked=report.checked,
            seconds=report.seconds,
            broken_seq=report.broken_seq,
            problem=report.problem,
        )
