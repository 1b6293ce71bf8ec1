"""The worker's periodic jobs, as one table: name, step, interval, and a lease where one worker at a time runs it."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from asgiref.sync import sync_to_async
from django.db import DatabaseError, connections
from redis.exceptions import RedisError

from busapp.actions.access import grants_expire
from busapp.actions.dead_letters import BULK_TICK_SECONDS, bulk_action_step, bulk_actions_running
from busapp.actions.drift import drift_advance
from busapp.actions.publishing import idempotency_keys_purge
from busapp.actions.requests import publish_requests_due
from busapp.audit import ChainReport, audit_verify
from busapp.delivery import LISTENERS_SAMPLE_EVERY_SECONDS, LISTENERS_SAMPLE_LEASE_SECONDS, listeners_sample
from busapp.live import bulk_group, drift_item, group_message, subscribers_group
from busapp.models import BulkAction
from busapp.publishing import relay_pending
from busapp.store import store
from busapp.version_counts import COUNT_EVERY_SECONDS, COUNT_LEASE_SECONDS, version_counts_advance
from busapp.worker.steps import in_db

logger = logging.getLogger(__name__)

# Errors a job's step meets when the database or Redis does not answer: logged, and tried again next time.
OUTAGES: tuple[type[BaseException], ...] = (DatabaseError, RedisError, OSError)
RELAY_EVERY_SECONDS = 0.5
SCHEDULE_EVERY_SECONDS = 1.0
# Expired grants are written down and removed (the checks ignore them already), old idempotency keys forgotten.
TIDY_EVERY_SECONDS = 30.0
TIDY_LEASE_SECONDS = 60
# The audit chain: new entries checked every minute, the whole chain every hour.
AUDIT_CHECK_EVERY_SECONDS = 60.0
AUDIT_FULL_CHECK_EVERY_SECONDS = 3600.0
AUDIT_CHECK_LEASE_SECONDS = 3600
# Drift is looked for twice a second: a drift shows on open pages within 2 s of its deadline even
# when a check takes a while (the next waits this long after one ends).
DRIFT_EVERY_SECONDS = 0.5
DRIFT_LEASE_SECONDS = 30
# SQLite: the WAL is copied into the database this often (settings.py: publishers then never do).
CHECKPOINT_EVERY_SECONDS = 1.0


@dataclass(frozen=True)
class Job:
    """A periodic job: its step answers how many things it handled; with a lease, one worker at a time runs it."""

    name: str
    step: Callable[[], Awaitable[int]]
    every: float
    # Logged with the count when a step handled something ("sent %d pending event(s)").
    did: str = ""
    # While a step handles something, the next one runs at once (a backlog is worked off without pauses).
    again_at_once: bool = False
    lease_seconds: int | None = None
    # Logged when another worker holds the lease.
    waiting: str = ""
    # What a failed step may raise and the job survive (logged, tried again after ``every``).
    survives: tuple[type[BaseException], ...] = OUTAGES


def jobs_table(*, layer: Any) -> list[Job]:
    """Every periodic job of a bus worker; ``layer`` is the Channels layer bulk progress is told on."""
    table = [
        Job(
            "relay",
            _in_db_step(relay_pending),
            RELAY_EVERY_SECONDS,
            did="sent %d pending event(s) and dead letter(s)",
            again_at_once=True,
        ),
        Job(
            "scheduler",
            _in_db_step(publish_requests_due),
            SCHEDULE_EVERY_SECONDS,
            did="published %d scheduled event(s)",
            again_at_once=True,
        ),
        Job(
            "tidy",
            _in_db_step(_tidy),
            TIDY_EVERY_SECONDS,
            did="removed %d expired grant(s) or old idempotency key(s)",
            again_at_once=True,
            lease_seconds=TIDY_LEASE_SECONDS,
        ),
        Job(
            "audit-check",
            AuditCheck().step,
            AUDIT_CHECK_EVERY_SECONDS,
            lease_seconds=AUDIT_CHECK_LEASE_SECONDS,
            waiting="another worker is checking the chain; this one waits its turn",
            survives=(Exception,),  # a failed check is logged; it must not stop the relay and the tap
        ),
        Job("bulk", BulkTicks(layer).step, BULK_TICK_SECONDS),
        Job(
            "version-counts",
            _in_db_step(version_counts_advance),
            COUNT_EVERY_SECONDS,
            did="counted %d event(s) under their schema versions",
            again_at_once=True,
            lease_seconds=COUNT_LEASE_SECONDS,
        ),
        # Seed-style subscribers are anonymous: their count over time is all the dashboard can show of them.
        Job(
            "listeners",
            _in_db_step(listeners_sample),
            LISTENERS_SAMPLE_EVERY_SECONDS,
            lease_seconds=LISTENERS_SAMPLE_LEASE_SECONDS,
        ),
    ]
    table.append(
        Job(
            "drift",
            DriftChecks(layer).step,
            DRIFT_EVERY_SECONDS,
            did="opened or cleared %d drift(s)",
            lease_seconds=DRIFT_LEASE_SECONDS,
        )
    )
    if store().tidies:
        table.append(Job("checkpoint", _checkpoint_step, CHECKPOINT_EVERY_SECONDS))
    return table


def _in_db_step(function: Callable[[], int]) -> Callable[[], Awaitable[int]]:
    """A step that runs a database function in Django's sync thread."""

    async def step() -> int:
        return await in_db(function)

    return step


def _tidy() -> int:
    """One round of tidying; how many grants and keys it removed."""
    return grants_expire() + idempotency_keys_purge()


class AuditCheck:
    """The audit chain's check: the whole of it at start and hourly, the new entries every minute.

    In a thread of its own (with its own database connection), so a long check of a big log
    never holds up the tap or the relay.
    """

    def __init__(self) -> None:
        self.last_full = -AUDIT_FULL_CHECK_EVERY_SECONDS

    async def step(self) -> int:
        """One check; a broken chain is logged as an error (and recorded by ``audit_verify``)."""
        full = time.monotonic() - self.last_full >= AUDIT_FULL_CHECK_EVERY_SECONDS
        report = await sync_to_async(_audit_check, thread_sensitive=False)(not full)
        if full:
            self.last_full = time.monotonic()
        if not report.intact:
            logger.error("audit log broken at entry #%s: %s", report.broken_seq, report.problem)
        return 0


def _audit_check(resume: bool) -> ChainReport:
    """One check of the audit chain, recorded; the thread's database connection is closed after it."""
    try:
        return audit_verify(resume=resume, checked_by="system:bus-worker")
    finally:
        connections.close_all()


class DriftChecks:
    """Subscribers' drift: opened past a deadline, cleared on a receipt, each change told to its topic's pages."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer

    async def step(self) -> int:
        """One check; how many drifts it opened or cleared."""
        changes = await in_db(drift_advance)
        if changes and self.layer is not None:
            groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for drift in [*changes.opened, *(drift for drift, _ in changes.cleared)]:
                groups[subscribers_group(drift.topic.name)].append(drift_item(drift))
            for group, items in groups.items():
                try:
                    await self.layer.group_send(group, group_message(group, items))
                except Exception:  # the pages are a view: the topic page and the audit log have every drift
                    logger.exception("drift: %d change(s) not shown live on %s", len(items), group)
        return len(changes)


class BulkTicks:
    """Bulk replays and discards: each running action advanced by what its rate allows per tick, its page told."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer

    async def step(self) -> int:
        """One tick of every running bulk action (not counted: a tick is never worth a log line)."""
        for action_id in await in_db(bulk_actions_running):
            action = await in_db(partial(bulk_action_step, action_id=action_id))
            await self._tell_progress(action)
        return 0

    async def _tell_progress(self, action: BulkAction) -> None:
        """One progress message to the action's page (best effort: the page also reads it on load)."""
        if self.layer is None:
            return
        try:
            await self.layer.group_send(bulk_group(action.pk), {"type": "bulk.progress", **action.progress()})
        except Exception:  # the progress page is best effort; the action and its report are in the database
            logger.exception("bulk: progress of #%d not sent", action.pk)


async def _checkpoint_step() -> int:
    """The database's upkeep (SQLite: a WAL checkpoint) in a thread of its own, so publishers never pay for it."""
    await sync_to_async(store().tidy, thread_sensitive=False)()
    return 0
