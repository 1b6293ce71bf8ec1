"""Receipts: what each subscriber did with an event, recorded once per (event, subscriber), with its audit entries.

Receipts arrive over the API (one, or a batch, with a token bound to the subscriber) or on
the receipts stream, which the bus worker records in bulk. Either way they pass the same
checks here: the event exists, the subscriber follows its topic and type, the status is
one of three, the detail fits in 4 KiB. A second receipt that says the same is answered
with the first (idempotent); one that says something else is refused: a receipt is final.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from django.db import DatabaseError, DataError, IntegrityError, transaction

from busapp.audit import Actor, AuditRecord, audit_append
from busapp.errors import BusInputError, FieldError, survivable
from busapp.live import receipts_announce
from busapp.models import (
    RECEIPT_DETAIL_MAX_BYTES,
    SUBSCRIBER_NAME_PATTERN,
    AuditAction,
    Event,
    Receipt,
    ReceiptStatus,
    ReceiptVia,
    Subscriber,
    SubscriberFollow,
)
from busapp.publishing import StreamEntry, receipts_recorded_count

logger = logging.getLogger(__name__)

_STATUSES = frozenset(ReceiptStatus.values)  # Choices.values builds its list on every call

ENVELOPE_ID_MAX = 128  # as ``Event.envelope_id``
SUBSCRIBER_NAME_RE = re.compile(SUBSCRIBER_NAME_PATTERN)
# Two writers recording the same (event, subscriber) at once: the loser reads the winner's and tries again.
RECORD_ATTEMPTS = 3


class ReceiptRefusal(StrEnum):
    """Why a receipt was not recorded; the API answers each with its own status."""

    INVALID = "invalid"  # a field breaks its rule (400)
    UNKNOWN_SUBSCRIBER = "unknown_subscriber"  # no such registered subscriber (404)
    UNKNOWN_EVENT = "unknown_event"  # no such event in the history (404)
    NOT_FOLLOWED = "not_followed"  # the subscriber does not follow the event's topic or type (403)
    OUT_OF_SCOPE = "out_of_scope"  # the event's topic is not one the caller (a service token) may use (403)
    CONFLICT = "conflict"  # the subscriber's receipt for the event says something else already (409)
    UNPROCESSABLE = "unprocessable"  # a stream entry the database refused or that broke a check (the stream only)


class ReceiptRefusedError(BusInputError):
    """Receipts the bus refuses: every problem at its field, and why (the first refusal's kind)."""

    def __init__(self, errors: list[FieldError], refusal: ReceiptRefusal) -> None:
        super().__init__(errors)
        self.refusal = refusal


@dataclass(frozen=True)
class ReceiptIn:
    """A receipt as it arrived, nothing checked yet: ``event``, ``status`` and ``detail`` are whatever was sent."""

    subscriber: str
    event: Any
    status: Any
    detail: Any
    received_at: dt.datetime
    via: ReceiptVia


@dataclass
class ReceiptOutcome:
    """One receipt's fate: recorded now, recorded already (the same words), or refused and why."""

    receipt: Receipt | None = None
    created: bool = False
    refusal: ReceiptRefusal | None = None
    errors: list[FieldError] = field(default_factory=list)


def receipts_record(
    receipts: Sequence[ReceiptIn], *, actor: Actor, whole: bool, topics: Collection[str] | None = None
) -> list[ReceiptOutcome]:
    """Check and record receipts in one transaction with their audit entries; one outcome per receipt, in order.

    ``whole``: all or nothing (the API's batch): any refusal raises ``ReceiptRefusedError`` with
    every problem at ``/<index>/<field>`` and nothing is written. Otherwise (the receipts stream)
    the good ones are recorded and each refused one says why in its outcome.
    ``topics``: the names of the only topics the caller may use (a service token's); None: any.
    """
    for attempt in range(1, RECORD_ATTEMPTS + 1):
        try:
            with transaction.atomic():
                return _record_once(receipts, actor=actor, whole=whole, topics=topics)
        except IntegrityError:
            if attempt == RECORD_ATTEMPTS:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def receipt_record(receipt: ReceiptIn, *, actor: Actor, topics: Collection[str] | None = None) -> ReceiptOutcome:
    """Check and record one receipt; a refusal raises ``ReceiptRefusedError`` with its problems at ``/<field>``."""
    outcome = receipts_record([receipt], actor=actor, whole=False, topics=topics)[0]
    if outcome.refusal is not None:
        raise ReceiptRefusedError(outcome.errors, outcome.refusal)
    return outcome


def _record_once(
    receipts: Sequence[ReceiptIn], *, actor: Actor, whole: bool, topics: Collection[str] | None
) -> list[ReceiptOutcome]:
    """One attempt: read what the checks need in four queries, then insert what is new."""
    known = _Known.read(receipts, topics)
    outcomes: list[ReceiptOutcome] = []
    new: dict[tuple[int, int], Receipt] = {}
    for receipt in receipts:
        outcome = known.checked(receipt, new)
        if outcome.receipt is not None and outcome.created:
            new[(outcome.receipt.event_id, outcome.receipt.subscriber_id)] = outcome.receipt
        outcomes.append(outcome)
    refused = [(index, outcome) for index, outcome in enumerate(outcomes) if outcome.refusal is not None]
    if whole and refused:
        errors = [
            _at(f"/{index}{error['path']}", error["message"]) for index, outcome in refused for error in outcome.errors
        ]
        raise ReceiptRefusedError(errors, refused[0][1].refusal or ReceiptRefusal.INVALID)
    if new:
        audit_append(actor=actor, records=_audit_records(list(new.values())), rows=list(new.values()))
        rows = list(new.values())
        transaction.on_commit(lambda: _recorded_tell(rows))
    return outcomes


def _recorded_tell(receipts: list[Receipt]) -> None:
    """Once committed: count them for /metrics and show them on the pages following their topics."""
    counts: dict[str, int] = defaultdict(int)
    for receipt in receipts:
        counts[receipt.status] += 1
    receipts_recorded_count(counts)
    receipts_announce(receipts)


@dataclass
class _Known:
    """What the database holds for a batch of receipts: their events, subscribers, follows and earlier receipts."""

    events: dict[str, Event]
    subscribers: dict[str, Subscriber]
    follows: dict[tuple[int, int], SubscriberFollow]  # by (subscriber id, topic id)
    followed_types: dict[int, set[int]]  # follow id -> event type ids (empty: every type)
    earlier: dict[tuple[int, int], Receipt]  # by (event id, subscriber id)
    topics: Collection[str] | None  # the only topics the caller may use; None: any

    @classmethod
    def read(cls, receipts: Sequence[ReceiptIn], topics: Collection[str] | None = None) -> _Known:
        """Read them in a handful of queries, however many receipts there are."""
        ids = {
            receipt.event
            for receipt in receipts
            if isinstance(receipt.event, str) and receipt.event and _storable(receipt.event)
        }
        names = {receipt.subscriber for receipt in receipts}
        rows = Event.objects.filter(envelope_id__in=ids).select_related("topic", "event_type").only(*_EVENT_FIELDS)
        events = {event.envelope_id: event for event in rows}
        subscribers = {subscriber.name: subscriber for subscriber in Subscriber.objects.filter(name__in=names)}
        follows = {
            (follow.subscriber_id, follow.topic_id): follow
            for follow in SubscriberFollow.objects.filter(subscriber__in=subscribers.values())
        }
        followed_types: dict[int, set[int]] = defaultdict(set)
        for follow_id, type_id in SubscriberFollow.event_types.through.objects.filter(
            subscriberfollow__in=follows.values()
        ).values_list("subscriberfollow_id", "eventtype_id"):
            followed_types[follow_id].add(type_id)
        # By event alone: the unique (event, subscriber) index's first column, however many receipts
        # a subscriber has (by subscriber too, the planner may read every receipt of each one).
        wanted = {subscriber.pk for subscriber in subscribers.values()}
        earlier = {
            (receipt.event_id, receipt.subscriber_id): receipt
            for receipt in Receipt.objects.filter(event__in=[event.pk for event in events.values()])
            if receipt.subscriber_id in wanted
        }
        return cls(events, subscribers, follows, followed_types, earlier, topics)

    def checked(self, receipt: ReceiptIn, new: dict[tuple[int, int], Receipt]) -> ReceiptOutcome:
        """The receipt's outcome: a new row to insert, the earlier one it repeats, or why it is refused."""
        problems = _field_problems(receipt)
        if problems:
            return ReceiptOutcome(refusal=ReceiptRefusal.INVALID, errors=problems)
        subscriber = self.subscribers.get(receipt.subscriber)
        if subscriber is None:
            message = f"no subscriber is registered as {receipt.subscriber!r}"
            return ReceiptOutcome(refusal=ReceiptRefusal.UNKNOWN_SUBSCRIBER, errors=[_at("/subscriber", message)])
        event = self.events.get(receipt.event)
        if event is None:
            message = f"no event {receipt.event!r} in the history"
            return ReceiptOutcome(refusal=ReceiptRefusal.UNKNOWN_EVENT, errors=[_at("/event", message)])
        if self.topics is not None and event.topic.name not in self.topics:
            message = f"is on topic {event.topic.name}, which the caller may not use: ask a bus admin to add it"
            return ReceiptOutcome(refusal=ReceiptRefusal.OUT_OF_SCOPE, errors=[_at("/event", message)])
        follow = self.follows.get((subscriber.pk, event.topic_id))
        types = self.followed_types.get(follow.pk, set()) if follow else set()
        if follow is None or (types and event.event_type_id not in types):
            what = f"topic {event.topic.name}" if follow is None else f"type {event.event_type.name}"
            message = f"{subscriber.name} does not follow {what}: its receipts are not expected there"
            return ReceiptOutcome(refusal=ReceiptRefusal.NOT_FOLLOWED, errors=[_at("/event", message)])
        key = (event.pk, subscriber.pk)
        earlier = self.earlier.get(key) or new.get(key)
        if earlier is not None:
            return _repeated(earlier, receipt)
        row = Receipt(
            event=event,
            subscriber=subscriber,
            status=receipt.status,
            detail=receipt.detail or "",
            received_at=receipt.received_at,
            via=receipt.via,
        )
        return ReceiptOutcome(receipt=row, created=True)


# An event's envelope and payload (up to 64 KiB each) are not needed to check a receipt.
_EVENT_FIELDS = ("envelope_id", "topic__name", "event_type__name", "published_at", "timestamp")


def _at(path: str, message: str) -> FieldError:
    """One problem at a field."""
    return {"path": path, "message": message}


def _field_problems(receipt: ReceiptIn) -> list[FieldError]:
    """Each field against its rule: an envelope id, one of three statuses, a detail of at most 4 KiB of text."""
    problems = []
    if not isinstance(receipt.event, str) or not receipt.event:
        problems.append(_at("/event", "is required: the envelope id of the event, as a string"))
    elif not _storable(receipt.event):  # never in an envelope id, and PostgreSQL refuses it in a query
        problems.append(_at("/event", "holds a NUL or a lone surrogate: no envelope id does"))
    elif len(receipt.event) > ENVELOPE_ID_MAX:
        problems.append(_at("/event", f"is longer than {ENVELOPE_ID_MAX} characters: no envelope id is"))
    if not isinstance(receipt.status, str) or receipt.status not in _STATUSES:
        statuses = ", ".join(repr(value) for value in ReceiptStatus.values)
        problems.append(_at("/status", f"{str(receipt.status)[:40]!r} is not one of {statuses}"))
    if receipt.detail is not None and not isinstance(receipt.detail, str):
        problems.append(_at("/detail", "must be text"))
    elif receipt.detail:
        problems.extend(_detail_problems(receipt.detail))
    return problems


def _storable(text: str) -> bool:
    """Whether the database takes the text: no NUL, no lone surrogate."""
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _detail_problems(detail: str) -> list[FieldError]:
    """A detail must be storable text of at most 4 KiB."""
    if "\x00" in detail:
        return [_at("/detail", "must not contain NUL characters")]
    try:
        size = len(detail.encode())
    except UnicodeEncodeError:
        return [_at("/detail", "holds a lone surrogate: it is not text")]
    if size > RECEIPT_DETAIL_MAX_BYTES:
        return [_at("/detail", f"is {size} bytes: at most {RECEIPT_DETAIL_MAX_BYTES} (4 KiB) are kept")]
    return []


def _repeated(earlier: Receipt, receipt: ReceiptIn) -> ReceiptOutcome:
    """The same receipt again is answered with the first; a different one is refused, since a receipt is final."""
    if earlier.status == receipt.status and earlier.detail == (receipt.detail or ""):
        return ReceiptOutcome(receipt=earlier)
    message = (
        f"{earlier.subscriber.name} already said {earlier.status!r} for this event: a receipt is final, "
        "and a different second one is refused"
    )
    return ReceiptOutcome(refusal=ReceiptRefusal.CONFLICT, errors=[_at("/status", message)])


def _audit_records(receipts: list[Receipt]) -> list[AuditRecord]:
    """One entry per subscriber: a lone receipt names its event; several are listed by status."""
    by_subscriber: dict[str, list[Receipt]] = defaultdict(list)
    for receipt in receipts:
        by_subscriber[receipt.subscriber.name].append(receipt)
    records = []
    for name, group in by_subscriber.items():
        if len(group) == 1:
            receipt = group[0]
            details: dict[str, Any] = {"subscriber": name, "status": receipt.status, "via": receipt.via}
            if receipt.detail:
                details["detail"] = receipt.detail
            records.append(AuditRecord(AuditAction.RECEIPT_RECORD, f"event:{receipt.event.envelope_id}", details))
            continue
        by_status: dict[str, list[str]] = defaultdict(list)
        for receipt in group:
            by_status[receipt.status].append(receipt.event.envelope_id)
        rejected = {r.event.envelope_id: r.detail for r in group if r.status == ReceiptStatus.REJECTED and r.detail}
        details = {"count": len(group), "via": group[0].via, "events": dict(by_status)}
        if rejected:
            details["rejected_details"] = rejected
        records.append(AuditRecord(AuditAction.RECEIPT_RECORD_BATCH, f"subscriber:{name}", details))
    return records


# The receipts stream: a JSON object per entry, recorded by the bus workers in bulk.

STREAM_ACTOR = "system:receipts-stream"
# An entry bigger than this is no receipt (4 KiB of detail and an id): refused unread.
STREAM_ENTRY_MAX_BYTES = 16 * 1024


@dataclass
class StreamReceipts:
    """What one batch of the receipts stream came to: recorded, waiting for their event, refused by reason."""

    recorded: list[Receipt] = field(default_factory=list)
    waiting: list[StreamEntry] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    first_problem: str = ""

    def merge(self, other: StreamReceipts) -> None:
        """Add what another batch came to."""
        self.recorded.extend(other.recorded)
        self.waiting.extend(other.waiting)
        for reason, count in other.refused.items():
            self.refused[reason] += count
        self.first_problem = self.first_problem or other.first_problem


def receipts_stream_record(entries: Sequence[StreamEntry], *, wait_until: dt.datetime) -> StreamReceipts:
    """Record the receipts of a batch of stream entries; nothing an entry holds makes it raise.

    A receipt can come before its event is in history (the tap records an external publisher's
    event a moment after the subscriber read it): one for an unknown event that was put on the
    stream after ``wait_until`` waits, unacknowledged, for the next batch; an older one is refused.
    Should the batch fail for something one entry holds (a value the database refuses, an error
    of ours), each entry is recorded on its own and what still fails is refused as unprocessable.
    A database that does not answer is another matter: the error rises, nothing is acknowledged.
    """
    try:
        return _stream_batch_record(entries, wait_until)
    except DatabaseError as error:
        if not isinstance(error, DataError):
            raise
        logger.info("receipts: a batch of %d needs recording one by one (%s)", len(entries), error)
    except BaseException as error:
        if not survivable(error):
            raise
        logger.exception("receipts: a batch of %d failed; recording its entries one by one", len(entries))
    result = StreamReceipts()
    for entry in entries:
        try:
            alone = _stream_batch_record([entry], wait_until)
        except DatabaseError as error:
            if not isinstance(error, DataError):
                raise
            _refused(result, ReceiptRefusal.UNPROCESSABLE, entry, _at("", f"the database refused it ({error})"))
            continue
        except BaseException as error:
            if not survivable(error):
                raise
            logger.exception("receipts: entry %s could not be processed; refused", entry.origin)
            _refused(result, ReceiptRefusal.UNPROCESSABLE, entry, _at("", f"could not be processed ({error!r})"))
            continue
        result.merge(alone)
    return result


def _stream_batch_record(entries: Sequence[StreamEntry], wait_until: dt.datetime) -> StreamReceipts:
    """``receipts_stream_record`` of a batch in one transaction."""
    result = StreamReceipts()
    decoded: list[tuple[StreamEntry, ReceiptIn]] = []
    for entry in entries:
        receipt = _stream_receipt(entry)
        if isinstance(receipt, ReceiptIn):
            decoded.append((entry, receipt))
        else:
            _refused(result, ReceiptRefusal.INVALID, entry, receipt)
    outcomes = receipts_record([receipt for _, receipt in decoded], actor=STREAM_ACTOR, whole=False)
    for (entry, receipt), outcome in zip(decoded, outcomes, strict=True):
        if outcome.refusal is None:
            if outcome.created and outcome.receipt is not None:
                result.recorded.append(outcome.receipt)
        elif outcome.refusal == ReceiptRefusal.UNKNOWN_EVENT and receipt.received_at > wait_until:
            result.waiting.append(entry)
        else:
            _refused(result, outcome.refusal, entry, outcome.errors[0])
    return result


def _stream_receipt(entry: StreamEntry) -> ReceiptIn | FieldError:
    """The receipt an entry holds, or the problem with it."""
    if len(entry.body) > STREAM_ENTRY_MAX_BYTES:
        return _at("", f"is {len(entry.body)} bytes: no receipt is over {STREAM_ENTRY_MAX_BYTES}")
    try:
        body = json.loads(entry.body)
    except (ValueError, RecursionError):
        return _at("", "is not JSON: a receipt is a JSON object")
    if not isinstance(body, dict):
        return _at("", "is not a JSON object")
    subscriber = body.get("subscriber")
    if not isinstance(subscriber, str) or not SUBSCRIBER_NAME_RE.fullmatch(subscriber):
        return _at("/subscriber", "is required: the subscriber's registered name (lowercase letters, digits, '-')")
    received_at = dt.datetime.fromtimestamp(int(entry.entry_id.split("-")[0]) / 1000, tz=dt.UTC)
    return ReceiptIn(
        subscriber, body.get("event"), body.get("status"), body.get("detail"), received_at, ReceiptVia.STREAM
    )


def _refused(result: StreamReceipts, refusal: ReceiptRefusal, entry: StreamEntry, problem: FieldError) -> None:
    """Count a refused entry; the first problem of a batch is kept for the log."""
    result.refused[refusal.value] += 1
    if not result.first_problem:
        result.first_problem = f"{entry.origin}{problem['path']}: {problem['message']}"
