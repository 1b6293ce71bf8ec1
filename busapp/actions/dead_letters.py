"""The dead-letter workbench: letters kept, fixed and replayed, or discarded; bulk runs at a capped rate."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from busapp.actions.publishing import dead_letter_audit_record, dead_letter_build, event_publish
from busapp.actions.reasons import reason_checked
from busapp.audit import Actor, audit_append, audit_record
from busapp.errors import (
    ActionRefusedError,
    BusInputError,
    FieldError,
    errors_joined,
)
from busapp.models import (
    AuditAction,
    BulkAction,
    BulkActionKind,
    BulkActionStatus,
    DeadLetter,
    DeadLetterStatus,
    Event,
    SchemaVersion,
    Source,
    Topic,
)
from busapp.publishing import send_on_commit
from busapp.selectors import ActiveVersions
from busapp.validation import (
    json_parse,
    payload_errors,
)


def dead_letter_create(*, topic: Topic, raw: str, errors: list[FieldError], source: str, actor: Actor) -> DeadLetter:
    """Keep a refused event as it arrived, audit it, and send it to ``<topic>.dlq`` on commit."""
    letter = dead_letter_build(topic=topic, raw=raw, errors=errors, source=source, actor=actor)
    with transaction.atomic():
        letter.save()
        audit_append(actor=actor, records=[dead_letter_audit_record(letter)])
        send_on_commit(dead_letters=[letter])
    return letter


def _open_letter_locked(letter_id: int) -> DeadLetter:
    """The dead letter, locked for this transaction; refused unless it is still open."""
    letter = DeadLetter.objects.select_for_update(of=("self",)).select_related("topic").get(pk=letter_id)
    if letter.status != DeadLetterStatus.OPEN:
        message = f"this dead letter was already {letter.get_status_display()}"
        raise ActionRefusedError([{"path": "/status", "message": message}])
    return letter


@transaction.atomic
def dead_letter_replay(*, letter_id: int, event_type: str, payload: Any, actor: User) -> Event:
    """Publish a (fixed) dead letter to its original topic as a new event whose record names the letter.

    Validated against the current schema version like any publish: a payload that still
    fails is refused with its errors, and the letter stays open.
    """
    letter = _open_letter_locked(letter_id)
    event = event_publish(
        topic=letter.topic.name, event_type=event_type, payload=payload, actor=actor, source=Source.REPLAY
    )
    letter.status, letter.replayed_by, letter.replayed_at, letter.replay_event = (
        DeadLetterStatus.REPLAYED,
        actor,
        timezone.now(),
        event,
    )
    letter.save(update_fields=["status", "replayed_by", "replayed_at", "replay_event"])
    audit_record(
        actor=actor,
        action=AuditAction.DEAD_LETTER_REPLAY,
        target=f"dead_letter:{letter.pk}",
        details={"topic": letter.topic.name, "type": event_type, "event": event.envelope_id},
    )
    return event


@transaction.atomic
def dead_letter_discard(*, letter_id: int, actor: User, reason: str) -> DeadLetter:
    """Close a dead letter without sending anything, saying why."""
    reason = reason_checked(reason)
    letter = _open_letter_locked(letter_id)
    letter.status, letter.discarded_by, letter.discarded_at, letter.discard_reason = (
        DeadLetterStatus.DISCARDED,
        actor,
        timezone.now(),
        reason,
    )
    letter.save(update_fields=["status", "discarded_by", "discarded_at", "discard_reason"])
    audit_record(
        actor=actor,
        action=AuditAction.DEAD_LETTER_DISCARD,
        target=f"dead_letter:{letter.pk}",
        details={"topic": letter.topic.name, "reason": letter.discard_reason},
    )
    return letter


BULK_RATE_LIMIT = 500  # dead letters a second, at most, whatever is asked
BULK_TICK_SECONDS = 0.2  # the bus worker steps every running bulk action this often


def dead_letter_contents(letter: DeadLetter) -> tuple[str | None, dict[str, Any] | None]:
    """The event type and payload a dead letter carried, where its body says (None where it was not JSON)."""
    return body_contents(letter.raw)


def body_contents(raw: str) -> tuple[str | None, dict[str, Any] | None]:
    """The event type and payload a body that arrived names, where it says (None where it was not JSON)."""
    body, unreadable = json_parse(raw, around=1)
    if unreadable or not isinstance(body, dict):
        return None, None
    kind = body.get("type") if isinstance(body.get("type"), str) else None
    payload = body.get("payload") if isinstance(body.get("payload"), dict) else None
    return kind, payload


@dataclass(frozen=True)
class BulkEstimate:
    """What a bulk action over a selection would meet: how many letters, how many pass the current schema."""

    letter_ids: list[int]
    passing: int

    @property
    def failing(self) -> int:
        """How many would be skipped by a replay: they fail the current schema as they are."""
        return len(self.letter_ids) - self.passing


def bulk_estimate(*, letters: Sequence[DeadLetter]) -> BulkEstimate:
    """Check each open letter's contents against its type's current schema version, without changing anything."""
    active = ActiveVersions()
    passing = 0
    for letter in letters:
        kind, payload = dead_letter_contents(letter)
        version = active.get(letter.topic.name, kind) if kind else None
        if isinstance(version, SchemaVersion) and payload is not None and not payload_errors(version, payload):
            passing += 1
    return BulkEstimate([letter.pk for letter in letters], passing)


@transaction.atomic
def bulk_action_start(
    *, topic: Topic, kind: str, letter_ids: list[int], actor: User, rate_per_second: int, reason: str = ""
) -> BulkAction:
    """Start a bulk replay or discard; the bus worker runs it at the capped rate."""
    if kind == BulkActionKind.DISCARD:
        reason = reason_checked(reason)
    if not 1 <= rate_per_second <= BULK_RATE_LIMIT:
        message = f"must be from 1 to {BULK_RATE_LIMIT} dead letters a second"
        raise ActionRefusedError([{"path": "/rate_per_second", "message": message}])
    if not letter_ids:
        raise ActionRefusedError([{"path": "/selection", "message": "no open dead letter matches"}])
    action = BulkAction.objects.create(
        topic=topic,
        kind=kind,
        letter_ids=letter_ids,
        reason=reason.strip(),
        rate_per_second=rate_per_second,
        requested_by=actor,
    )
    audit_record(
        actor=actor,
        action=AuditAction(f"dead_letter.bulk_{kind}.start"),
        target=f"bulk_action:{action.pk}",
        details={"topic": topic.name, "letters": len(letter_ids), "rate_per_second": rate_per_second},
    )
    return action


@transaction.atomic
def bulk_action_cancel(*, action_id: int, actor: User) -> BulkAction:
    """Stop a running bulk action; what it already did stays done."""
    action = BulkAction.objects.select_for_update(of=("self",)).get(pk=action_id)
    if action.status != BulkActionStatus.RUNNING:
        raise ActionRefusedError([{"path": "/status", "message": f"this bulk action is already {action.status}"}])
    action.status, action.finished_at = BulkActionStatus.CANCELLED, timezone.now()
    action.save(update_fields=["status", "finished_at"])
    audit_record(
        actor=actor,
        action=AuditAction(f"dead_letter.bulk_{action.kind}.cancel"),
        target=f"bulk_action:{action.pk}",
        details={"handled": action.handled, "of": action.total},
    )
    return action


def bulk_letters_due(action: BulkAction, now: dt.datetime) -> int:
    """How many more letters the action's rate allows by ``now``: the first at once, then its rate a second.

    Paced from the action's start, so any whole rate is kept, one a second included; after a
    pause (no worker), it goes on at its rate, never faster.
    """
    elapsed = max(0.0, (now - action.requested_at).total_seconds())
    per_tick_most = math.ceil(action.rate_per_second * BULK_TICK_SECONDS) + 1
    return max(0, min(per_tick_most, 1 + math.floor(elapsed * action.rate_per_second) - action.handled))


def bulk_action_step(*, action_id: int, budget: int | None = None) -> BulkAction:
    """Handle the letters now due (or up to ``budget``) of a running action, its row locked; finish it at the end.

    Each letter is handled in a savepoint of its own. The counts and the report are saved once
    per step, not once per letter: the report grows with every letter, and rewriting it each
    time made a large action quadratic. A cancel takes effect at the next step (the worker
    steps every 200 ms).
    """
    with transaction.atomic():
        # The action's row is locked for the step: a second worker skips it (PostgreSQL) or waits
        # its turn and reads the counts the first one saved (SQLite's one writer), so no letter
        # is handled twice and the report counts each once. Each letter's replay sends on commit.
        action = (
            BulkAction.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("requested_by", "topic")
            .filter(pk=action_id)
            .first()
        )
        if action is None:  # another worker is stepping it
            return BulkAction.objects.get(pk=action_id)
        if action.status != BulkActionStatus.RUNNING:
            return action
        if budget is None:
            budget = bulk_letters_due(action, timezone.now())
        for letter_id in action.letter_ids[action.handled : action.handled + budget]:
            outcome, detail = _bulk_handle(action, letter_id)
            action.handled += 1
            if outcome == "skipped":
                action.skipped += 1
            else:
                action.succeeded += 1
            action.report.append({"letter": letter_id, "outcome": outcome, "detail": detail})
        action.save(update_fields=["handled", "succeeded", "skipped", "report"])  # never the status: a cancel stands
    if action.handled >= action.total:
        with transaction.atomic():
            finished = BulkAction.objects.filter(pk=action.pk, status=BulkActionStatus.RUNNING).update(
                status=BulkActionStatus.DONE, finished_at=timezone.now()
            )
            if finished:
                audit_record(
                    actor=action.requested_by,
                    action=AuditAction(f"dead_letter.bulk_{action.kind}.done"),
                    target=f"bulk_action:{action.pk}",
                    details={"succeeded": action.succeeded, "skipped": action.skipped},
                )
        action.refresh_from_db(fields=["status", "finished_at"])
    return action


def _bulk_handle(action: BulkAction, letter_id: int) -> tuple[str, str]:
    """Replay or discard one letter of a bulk action: the outcome and a word on it."""
    actor = action.requested_by
    try:
        if action.kind == BulkActionKind.DISCARD:
            dead_letter_discard(letter_id=letter_id, actor=actor, reason=action.reason)
            return "discarded", ""
        letter = DeadLetter.objects.select_related("topic").get(pk=letter_id)
        kind, payload = dead_letter_contents(letter)
        if kind is None or payload is None:
            return "skipped", "its body has no event type and payload to replay: fix it on its own page"
        event = dead_letter_replay(letter_id=letter_id, event_type=kind, payload=payload, actor=actor)
    except BusInputError as refused:
        return "skipped", errors_joined(refused.errors[:5])
    return "replayed", event.envelope_id


def bulk_actions_running() -> list[int]:
    """The ids of the bulk actions the worker should advance."""
    return list(BulkAction.objects.filter(status=BulkActionStatus.RUNNING).values_list("id", flat=True))
