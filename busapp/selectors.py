"""Reads: which schema version an event is checked against, what is waiting to go out, who holds which right."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING, Any

from django.contrib.auth.models import Group, User
from django.db.models import Count, Max, Min, Q, QuerySet
from django.db.models.functions import TruncHour, TruncMinute
from django.utils import timezone

from busapp.dead_letter_causes import Cause
from busapp.errors import BusInputError, EventRejectedError, FieldError, TopicNotFoundError
from busapp.models import (
    AuditAction,
    AuditEntry,
    ChangeRequestStatus,
    DeadLetter,
    DeadLetterStatus,
    Event,
    EventStatus,
    EventType,
    PublishRequest,
    PublishRequestStatus,
    SchemaVersion,
    SchemaVersionRequest,
    SchemaVersionState,
    Topic,
    TopicGroupGrant,
    TopicUserGrant,
)
from busapp.permissions import APPROVE_TOPIC, PUBLISH_TOPIC, TOPIC_RIGHTS, VIEW_TOPIC, grant_live, topics_with_right
from busapp.store import ActiveVersionRow, store
from busapp.validation import json_parse

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser

# Every publish resolves its schema version (``Store.version_active_row``, one prepared statement),
# and the immutable schema body is fetched once per version. Topic settings and the version's state are read fresh.
# The version, its event type and topic, built once per distinct row: any change to a
# column read here (a new version, a version's state, the topic's settings) gives a
# new row and so a fresh object. Callers only read these objects.
_versions: dict[tuple[Any, ...], SchemaVersion] = {}
_VERSIONS_KEPT = 1000


def _version_from_row(topic: str, event_type: str, row: ActiveVersionRow) -> SchemaVersion:
    """The SchemaVersion (with event type and topic) that a lookup row describes."""
    key = (topic, event_type, row)
    version = _versions.get(key)
    if version is None:
        version_id, number, fingerprint, event_type_id, topic_id, sensitive, stream_retention, state = astuple(row)
        schema, source = SchemaVersion.objects.values_list("schema", "source").get(pk=version_id)
        topic_row = Topic(id=topic_id, name=topic, sensitive=bool(sensitive), stream_retention=stream_retention)
        version = SchemaVersion(
            id=version_id,
            version=number,
            schema=schema,
            source=source,
            fingerprint=fingerprint,
            state=state,
            event_type=EventType(id=event_type_id, name=event_type, topic=topic_row),
        )
        if len(_versions) >= _VERSIONS_KEPT:
            _versions.clear()
        _versions[key] = version
    return version


def schema_version_active(*, topic: str, event_type: str) -> SchemaVersion:
    """The newest schema version of a topic's event type not disabled, or a clear error naming what is unknown."""
    row = store().version_active_row(topic, event_type)
    if row is not None:
        return _version_from_row(topic, event_type, row)
    if not Topic.objects.filter(name=topic).exists():
        raise TopicNotFoundError([{"path": "/topic", "message": f"unknown topic {topic!r}"}])
    known = list(EventType.objects.filter(topic__name=topic).values_list("name", flat=True))
    if event_type in known:
        message = f"event type {event_type!r} on topic {topic!r} has no active schema version: every one is disabled"
    else:
        message = f"unknown event type {event_type!r} on topic {topic!r}; known: {', '.join(known) or 'none'}"
    raise EventRejectedError([{"path": "/type", "message": message}])


class ActiveVersions:
    """Active schema versions by (topic, type), each looked up once per batch; a refusal is kept as its errors."""

    def __init__(self) -> None:
        self.found: dict[tuple[str, str], SchemaVersion | list[FieldError]] = {}
        self.disabled: dict[int, set[int]] = {}

    def get(self, topic: str, event_type: str) -> SchemaVersion | list[FieldError]:
        """The version to validate against, or the errors that say why there is none."""
        key = (topic, event_type)
        if key not in self.found:
            try:
                self.found[key] = schema_version_active(topic=topic, event_type=event_type)
            except BusInputError as refused:
                self.found[key] = refused.errors
        return self.found[key]

    def disabled_errors(self, in_force: SchemaVersion, named: Any) -> list[FieldError]:
        """A refusal naming the version to use when an envelope names a disabled version of its type."""
        type_id = in_force.event_type.pk
        if type_id not in self.disabled:
            disabled = SchemaVersion.objects.filter(event_type_id=type_id, state=SchemaVersionState.DISABLED)
            self.disabled[type_id] = set(disabled.values_list("version", flat=True))
        if named not in self.disabled[type_id]:
            return []
        kind = in_force.event_type.name
        message = f"v{named} of {kind} is disabled: publish against v{in_force.version}"
        return [{"path": "/schema_version", "message": message}]


def topic_get(*, name: str) -> Topic:
    """The topic called ``name``, or an error naming it."""
    topic = Topic.objects.filter(name=name).first()
    if topic is None:
        raise TopicNotFoundError([{"path": "/topic", "message": f"unknown topic {name!r}"}])
    return topic


def pending_event_count() -> int:
    """How many accepted events are still waiting for Redis."""
    return Event.objects.filter(status=EventStatus.PENDING).count()


def topics_visible_to(user: User | AnonymousUser) -> QuerySet[Topic]:
    """The topics a person may see: all of them with the role-wide right, else those granted one by one."""
    return topics_with_right(user, VIEW_TOPIC)


def topic_names_with_right(user: User, right: str, topics: QuerySet[Topic]) -> set[str]:
    """Which of these topics the person holds ``right`` on (role-wide or granted), in one query."""
    return set(topics_with_right(user, right, topics).values_list("name", flat=True))


@dataclass(frozen=True)
class TopicSummary:
    """What the dashboard and the topic list say about one topic."""

    topic: Topic
    last_event_at: dt.datetime | None
    events_last_day: int
    open_dead_letters: int
    can_publish: bool


def topic_summaries(user: User, topics_query: QuerySet[Topic]) -> list[TopicSummary]:
    """Per topic: newest event time, events in the last 24 hours, open dead letters, and the publish right.

    Each figure is read over the (topic, time) indexes, never by counting the whole history.
    """
    topics = list(topics_query.select_related("owner"))
    since = timezone.now() - dt.timedelta(days=1)
    recent = dict(
        Event.objects.filter(topic__in=topics, timestamp__gte=since)
        .values_list("topic")
        .annotate(count=Count("id"))
        .values_list("topic", "count")
    )
    newest = dict(
        Event.objects.filter(topic__in=topics)
        .values_list("topic")
        .annotate(newest=Max("timestamp"))
        .values_list("topic", "newest")
    )
    open_letters = dict(
        DeadLetter.objects.filter(topic__in=topics, status=DeadLetterStatus.OPEN)
        .values_list("topic")
        .annotate(count=Count("id"))
        .values_list("topic", "count")
    )
    publishable = set(topics_with_right(user, PUBLISH_TOPIC, topics_query).values_list("pk", flat=True))
    return [
        TopicSummary(
            topic=topic,
            last_event_at=newest.get(topic.pk),
            events_last_day=recent.get(topic.pk, 0),
            open_dead_letters=open_letters.get(topic.pk, 0),
            can_publish=topic.pk in publishable,
        )
        for topic in topics
    ]


def recent_events(*, topic: Topic, limit: int = 10) -> list[Event]:
    """A topic's newest events, newest first (over the (topic, timestamp, id) index)."""
    return list(
        Event.objects.filter(topic=topic)
        .select_related("event_type", "schema_version")
        .order_by("-timestamp", "-id")[:limit]
    )


def event_types_with_active_versions(*, topic: Topic) -> list[tuple[EventType, SchemaVersion | None]]:
    """A topic's event types, each with the schema version a publish is checked against now (None if none)."""
    types = list(EventType.objects.filter(topic=topic).order_by("name"))
    versions: dict[int, SchemaVersion] = {}
    for version in SchemaVersion.objects.active().filter(event_type__in=types).select_related("event_type"):
        versions.setdefault(version.event_type_id, version)  # newest first
    return [(event_type, versions.get(event_type.pk)) for event_type in types]


def schema_versions_by_type(types: Iterable[EventType]) -> dict[int, list[SchemaVersion]]:
    """Every schema version of each type, newest first, with who created it: one query."""
    found: dict[int, list[SchemaVersion]] = {}
    rows = SchemaVersion.objects.filter(event_type__in=list(types)).select_related("created_by").order_by("-version")
    for version in rows:
        found.setdefault(version.event_type_id, []).append(version)
    return found


def version_requests_waiting(topic: Topic) -> dict[int, SchemaVersionRequest]:
    """The breaking versions waiting for a second bus admin on a topic, by event type id."""
    waiting = SchemaVersionRequest.objects.filter(
        event_type__topic=topic, status=ChangeRequestStatus.AWAITING_APPROVAL
    ).select_related("requested_by")
    return {request.event_type_id: request for request in waiting}


def dead_letters_open_count(topics: Iterable[Topic]) -> int:
    """Open dead letters on the given topics."""
    return DeadLetter.objects.filter(topic__in=list(topics), status=DeadLetterStatus.OPEN).count()


def event_in_force(*, event_type: EventType) -> Event | None:
    """The newest published event of an event type (of its one topic): the value every service should hold now."""
    return (
        Event.objects.filter(event_type=event_type, status=EventStatus.PUBLISHED).order_by("-timestamp", "-id").first()
    )


def _awaiting(user: User) -> QuerySet[PublishRequest]:
    """Requests waiting for a second person that this person may decide: not their own, on topics they approve."""
    topics = topics_with_right(user, APPROVE_TOPIC)
    awaiting = PublishRequest.objects.filter(status=PublishRequestStatus.AWAITING_APPROVAL, topic__in=topics)
    return awaiting.exclude(requested_by=user)


def publish_requests_for_approver(user: User) -> list[PublishRequest]:
    """The requests this person may decide, oldest first."""
    return list(_awaiting(user).select_related("topic", "event_type", "requested_by").order_by("requested_at"))


def publish_requests_for_approver_count(user: User) -> int:
    """How many requests wait for this person's decision (the navigation's badge)."""
    return _awaiting(user).count()


# The requests page lists at most this many of a person's own requests, and of decided ones.
REQUESTS_LISTED = 50


def publish_requests_of(user: User) -> list[PublishRequest]:
    """A person's own requests, newest first."""
    mine = PublishRequest.objects.filter(requested_by=user).select_related("topic", "event_type", "decided_by")
    return list(mine.order_by("-requested_at", "-id")[:REQUESTS_LISTED])


def publish_requests_decided(topics: QuerySet[Topic]) -> list[PublishRequest]:
    """Requests decided (approved, rejected, cancelled, published) on these topics, newest decision first."""
    decided = PublishRequest.objects.filter(topic__in=topics, decided_at__isnull=False)
    decided = decided.select_related("topic", "event_type", "requested_by", "decided_by")
    return list(decided.order_by("-decided_at", "-id")[:REQUESTS_LISTED])


def publish_requests_open(topics: QuerySet[Topic]) -> list[PublishRequest]:
    """Publishes still waiting (for approval or their time) on the given topics, soonest first."""
    return list(
        PublishRequest.objects.filter(status__in=PublishRequestStatus.open(), topic__in=topics)
        .select_related("topic", "event_type", "requested_by")
        .order_by("effective_at", "requested_at")
    )


def events_after(*, topics: QuerySet[Topic], envelope_id: str | None, limit: int) -> tuple[list[Event], bool] | None:
    """Events on these topics after the given one in (timestamp, id) order, oldest first, and whether more follow.

    Without an envelope id: the newest ``limit``. None when the id is not an event on these topics.
    """
    events = Event.objects.filter(topic__in=topics).select_related("topic", "event_type")
    if envelope_id is None:
        newest = list(events.order_by("-timestamp", "-id")[:limit])
        return newest[::-1], False
    anchor = events.filter(envelope_id=envelope_id).values_list("timestamp", "id").first()
    if anchor is None:
        return None
    timestamp, pk = anchor
    later = events.filter(Q(timestamp__gt=timestamp) | Q(timestamp=timestamp, id__gt=pk)).order_by("timestamp", "id")
    page = list(later[: limit + 1])
    return page[:limit], len(page) > limit


# A bulk action takes at most this many open dead letters, oldest first.
DEAD_LETTER_GROUPING_LIMIT = 10_000
# The workbench shows the biggest this many causes, and the values of this many letters of each.
CAUSES_SHOWN = 50
VALUES_SAMPLED = 5
VALUE_SHOWN_LENGTH = 40
VALUE_BODY_LIMIT = 256 * 1024  # characters: bodies past the bus's payload limit are not read for their values


@dataclass(frozen=True)
class DeadLetterGroup:
    """Open dead letters of one topic with one cause: how many, since when, and values they carried."""

    topic: str
    cause: Cause
    count: int
    oldest: dt.datetime
    newest_id: int
    values: list[str]


def _open_with_cause(topic: Topic | str, cause: Cause) -> QuerySet[DeadLetter]:
    """A topic's open dead letters of one cause (over the ``deadletter_open_cause`` index)."""
    topic_match = Q(topic__name=topic) if isinstance(topic, str) else Q(topic=topic)
    return DeadLetter.objects.filter(
        topic_match,
        status=DeadLetterStatus.OPEN,
        event_type_name=cause.event_type,
        cause_path=cause.path,
        cause_message=cause.message,
    )


def dead_letters_matching(*, topic: Topic, cause: Cause | None) -> list[DeadLetter]:
    """A topic's open dead letters, oldest first: all of them, or those of one cause."""
    if cause is None:
        letters = DeadLetter.objects.filter(topic=topic, status=DeadLetterStatus.OPEN)
    else:
        letters = _open_with_cause(topic, cause)
    return list(letters.select_related("topic").order_by("received_at", "id")[:DEAD_LETTER_GROUPING_LIMIT])


def dead_letter_groups(topics: QuerySet[Topic]) -> list[DeadLetterGroup]:
    """Open dead letters by topic and cause, biggest group first, each with values its newest letters carried."""
    rows = (
        DeadLetter.objects.filter(topic__in=topics, status=DeadLetterStatus.OPEN)
        .values_list("topic__name", "event_type_name", "cause_path", "cause_message")
        .annotate(count=Count("id"), oldest=Min("received_at"), newest=Max("id"))
        .order_by("-count", "topic__name", "event_type_name", "cause_path", "cause_message")[:CAUSES_SHOWN]
    )
    groups = []
    for topic, event_type, path, message, count, oldest, newest in rows:
        cause = Cause(event_type, path, message)
        groups.append(DeadLetterGroup(topic, cause, count, oldest, newest, _values_seen(topic, cause)))
    return groups


def _values_seen(topic: str, cause: Cause) -> list[str]:
    """The distinct values the newest letters of a cause carried where their first error points, as JSON text."""
    seen: list[str] = []
    letters = _open_with_cause(topic, cause).order_by("-received_at").values_list("raw", "errors")
    for raw, errors in letters[:VALUES_SAMPLED]:
        value = letter_value_at(raw, errors[0]["path"] if errors else "")
        if value is not None and value not in seen:
            seen.append(value)
    return seen


def letter_cause(letter: DeadLetter) -> Cause:
    """The cause a dead letter was kept with."""
    return Cause(letter.event_type_name, letter.cause_path, letter.cause_message)


@dataclass(frozen=True)
class CauseNeighbours:
    """Where an open dead letter stands among the open letters of its cause, oldest first."""

    position: int
    count: int
    previous_id: int | None
    next_id: int | None


def dead_letter_neighbours(letter: DeadLetter) -> CauseNeighbours | None:
    """The letter's place in its cause's group and the letters before and after it; None once it is closed."""
    if letter.status != DeadLetterStatus.OPEN:
        return None
    same = _open_with_cause(letter.topic, letter_cause(letter))
    moment, pk = letter.received_at, letter.pk
    before = same.filter(Q(received_at__lt=moment) | Q(received_at=moment, id__lt=pk))
    after = same.filter(Q(received_at__gt=moment) | Q(received_at=moment, id__gt=pk))
    return CauseNeighbours(
        position=before.count() + 1,
        count=same.count(),
        previous_id=before.order_by("-received_at", "-id").values_list("id", flat=True).first(),
        next_id=after.order_by("received_at", "id").values_list("id", flat=True).first(),
    )


def letter_value_at(raw: str, pointer: str) -> str | None:
    """What a letter's body holds at a JSON pointer, as short JSON text; None where it holds nothing readable."""
    if not pointer or len(raw) > VALUE_BODY_LIMIT:  # a document no event could be: not parsed for a page
        return None
    body, unreadable = json_parse(raw, around=1)
    if unreadable:
        return None
    for part in pointer.split("/")[1:]:
        key = part.replace("~1", "/").replace("~0", "~")
        if isinstance(body, dict) and key in body:
            body = body[key]
        elif isinstance(body, list) and key.isdigit() and int(key) < len(body):
            body = body[int(key)]
        else:
            return None
    text = json.dumps(body, ensure_ascii=False)
    return text if len(text) <= VALUE_SHOWN_LENGTH else text[: VALUE_SHOWN_LENGTH - 1] + "…"


def dead_letters_recent(topics: QuerySet[Topic], *, topic: str | None = None, limit: int = 100) -> list[DeadLetter]:
    """The newest dead letters (any status) on these topics, or on one of them."""
    letters = DeadLetter.objects.filter(topic__in=topics).select_related("topic")
    if topic:
        letters = letters.filter(topic__name=topic)
    return list(letters.order_by("-received_at", "-id")[:limit])


@dataclass(frozen=True)
class ChartRange:
    """A span the dashboard's traffic chart shows, and the bucket it counts events in."""

    buckets: int
    bucket: type[TruncMinute] | type[TruncHour]
    title: str

    @property
    def step(self) -> dt.timedelta:
        """One bucket's length."""
        return dt.timedelta(minutes=1) if self.bucket is TruncMinute else dt.timedelta(hours=1)


CHART_RANGES = {
    "1h": ChartRange(60, TruncMinute, "Events per minute, last hour"),
    "24h": ChartRange(24, TruncHour, "Events per hour, last 24 hours"),
    "7d": ChartRange(7 * 24, TruncHour, "Events per hour, last 7 days"),
}


def events_per_bucket(topics: QuerySet[Topic], span: ChartRange) -> tuple[list[dt.datetime], dict[str, list[int]]]:
    """Events per topic in each bucket of the span (the current one last), counted by the database in UTC."""
    now = timezone.now()
    current = now - (now - dt.datetime.min.replace(tzinfo=dt.UTC)) % span.step
    first = current - span.step * (span.buckets - 1)
    slots = [first + span.step * n for n in range(span.buckets)]
    counts = {name: [0] * span.buckets for name in topics.values_list("name", flat=True)}
    rows = (
        Event.objects.filter(topic__in=topics, timestamp__gte=first)
        .annotate(slot=span.bucket("timestamp"))
        .values_list("topic__name", "slot")
        .annotate(count=Count("id"))
        .order_by()
    )
    for name, slot, count in rows:
        index = int((slot - first) / span.step)
        if name in counts and 0 <= index < span.buckets:
            counts[name][index] += count
    return slots, counts


def dead_letters_open_by_topic(topics: QuerySet[Topic]) -> dict[str, int]:
    """Open dead letters per topic (zero included), over the (topic, status) index."""
    counts = dict.fromkeys(topics.values_list("name", flat=True), 0)
    rows = (
        DeadLetter.objects.filter(topic__in=topics, status=DeadLetterStatus.OPEN)
        .values_list("topic__name")
        .annotate(count=Count("id"))
        .values_list("topic__name", "count")
    )
    counts.update(dict(rows))
    return counts


@dataclass(frozen=True)
class EventProvenance:
    """Where an event came from and what vouches for it: its request, its dead letter, its audit entry."""

    request: PublishRequest | None
    dead_letter: DeadLetter | None
    accepted_entry: AuditEntry | None
    envelope_vouched: bool | None  # None: no audit entry holds a digest of it (recorded before digests were kept)


def event_provenance(event: Event) -> EventProvenance:
    """The publish request and dead letter an event came from, and whether its audit entry still vouches for it."""
    requests = PublishRequest.objects.select_related("requested_by", "decided_by")
    request = requests.filter(envelope_id=event.envelope_id).first()
    letter = DeadLetter.objects.select_related("replayed_by").filter(replay_event=event).first()
    entry = (
        AuditEntry.objects.filter(
            target=f"event:{event.envelope_id}", action__in=(AuditAction.EVENT_PUBLISH, AuditAction.EVENT_RECORD)
        )
        .order_by("seq")
        .first()
    ) or _batch_entry(event)
    return EventProvenance(request, letter, entry, _envelope_vouched(event, entry))


def _batch_entry(event: Event) -> AuditEntry | None:
    """The one audit entry of the batch that accepted the event (written in the same transaction, moments later)."""
    window = (event.created_at - dt.timedelta(seconds=1), event.created_at + dt.timedelta(seconds=30))
    candidates = AuditEntry.objects.filter(
        action__in=(AuditAction.EVENT_PUBLISH_BATCH, AuditAction.EVENT_RECORD_BATCH),
        target=f"topic:{event.topic.name}",
        time__range=window,
    ).order_by("seq")
    return next((entry for entry in candidates if event.envelope_id in entry.details.get("events", ())), None)


def _envelope_vouched(event: Event, entry: AuditEntry | None) -> bool | None:
    """True when the stored envelope still hashes to the digest its audit entry wrote down."""
    return None if entry is None else envelope_vouched(event.envelope, entry.details)


def envelope_vouched(envelope: str, details: Mapping[str, Any]) -> bool | None:
    """True when an envelope still hashes to the digest an audit entry's details hold (its own or its batch's).

    None when the entry holds no digest (recorded before digests were kept). The event page and
    ``verify_audit_log --events`` both ask this.
    """
    if "envelope_sha256" in details:
        vouched: str = details["envelope_sha256"]
        return envelopes_sha256([envelope]) == vouched
    if "envelopes_sha256" in details:
        return batch_vouched(details).intact
    return None


@dataclass(frozen=True)
class BatchCheck:
    """What a batch publish's audit entry still vouches for: whether its digest holds, which of its events are gone."""

    intact: bool
    missing: list[str]


def batch_vouched(details: Mapping[str, Any]) -> BatchCheck:
    """Re-hash the envelopes of a batch entry's events (in its order; a missing one as empty) against its digest."""
    ids = details.get("events", [])
    envelopes = dict(Event.objects.filter(envelope_id__in=ids).values_list("envelope_id", "envelope"))
    digest = envelopes_sha256([envelopes.get(envelope_id, "") for envelope_id in ids])
    missing = [envelope_id for envelope_id in ids if envelope_id not in envelopes]
    return BatchCheck(digest == details.get("envelopes_sha256"), missing)


def envelopes_sha256(envelopes: Iterable[str]) -> str:
    """sha256 of wire envelopes, one per line, in order: what the audit log vouches for."""
    return hashlib.sha256("\n".join(envelopes).encode()).hexdigest()


def event_audit_entries(event: Event, provenance: EventProvenance) -> list[AuditEntry]:
    """Every audit entry that mentions the event: its own, its batch's, its request's and its dead letter's."""
    targets = [f"event:{event.envelope_id}"]
    if provenance.request:
        targets.append(f"publish_request:{provenance.request.pk}")
    if provenance.dead_letter:
        targets.append(f"dead_letter:{provenance.dead_letter.pk}")
    entries = {entry.seq: entry for entry in AuditEntry.objects.filter(target__in=targets)}
    if provenance.accepted_entry is not None:
        entries[provenance.accepted_entry.seq] = provenance.accepted_entry
    return [entries[seq] for seq in sorted(entries)]


# --- who holds what: grants and the access matrix ---------------------------------------------

Principal = User | Group
Grant = TopicUserGrant | TopicGroupGrant
# Where each right stands in TOPIC_RIGHTS: the order rights are listed in everywhere.
RIGHT_RANK = {right: index for index, right in enumerate(TOPIC_RIGHTS)}


def principal_label(principal: Principal) -> str:
    """How the audit log and the pages name a person or a group: ``user:policy2``, ``group:Auditors``."""
    return f"user:{principal.get_username()}" if isinstance(principal, User) else f"group:{principal.name}"


def grant_principal(grant: Grant) -> Principal:
    """The person or group a grant is to."""
    return grant.user if isinstance(grant, TopicUserGrant) else grant.group


def grants_listed(*, now: dt.datetime | None = None) -> list[Grant]:
    """Every grant still in force, groups first, then people, by name, topic and right."""
    live = grant_live(now or timezone.now())
    related = ("content_object", "permission", "granted_by")
    groups = list(TopicGroupGrant.objects.filter(live).select_related("group", *related))
    people = list(TopicUserGrant.objects.filter(live).select_related("user", *related))

    def order(grant: Grant) -> tuple[str, str, int]:
        return (
            principal_label(grant_principal(grant)),
            grant.content_object.name,
            RIGHT_RANK[grant.permission.codename],
        )

    return sorted(groups, key=order) + sorted(people, key=order)


def grants_by_keys(keys: Sequence[str]) -> list[Grant]:
    """The grants named by form keys ``u<id>`` (a person's) and ``g<id>`` (a group's); unknown keys are ignored."""
    user_ids = [int(key[1:]) for key in keys if key[:1] == "u" and key[1:].isdigit()]
    group_ids = [int(key[1:]) for key in keys if key[:1] == "g" and key[1:].isdigit()]
    related = ("content_object", "permission")
    return [
        *TopicUserGrant.objects.filter(pk__in=user_ids).select_related("user", *related),
        *TopicGroupGrant.objects.filter(pk__in=group_ids).select_related("group", *related),
    ]


def grant_key(grant: Grant) -> str:
    """The form key of a grant (see ``grants_by_keys``)."""
    return f"{'u' if isinstance(grant, TopicUserGrant) else 'g'}{grant.pk}"


@dataclass(frozen=True)
class Held:
    """One right in one cell of the access matrix, and where it comes from."""

    right: str
    via: str  # "grant" (given here, revocable here), "role" (role-wide) or "group:<name>"
    grant: Grant | None = None


@dataclass
class MatrixRow:
    """A person or a group: their roles, their role-wide rights, and what they hold on each topic."""

    label: str
    name: str
    is_group: bool
    roles: list[str]
    role_wide: list[str]
    cells: list[tuple[Topic, list[Held]]]


def access_matrix(topics: Sequence[Topic], *, now: dt.datetime | None = None) -> list[MatrixRow]:
    """Topics by people and groups, each cell the rights held there (given directly, by role, or by a group).

    Five queries, however many topics, people and grants there are.
    """
    groups = list(Group.objects.order_by("name").prefetch_related("permissions"))
    people = list(User.objects.filter(is_active=True).order_by("username").prefetch_related("groups"))
    role_wide = {
        group.pk: sorted(
            {p.codename for p in group.permissions.all() if p.codename in RIGHT_RANK}, key=RIGHT_RANK.__getitem__
        )
        for group in groups
    }
    granted: dict[tuple[str, int], list[Held]] = {}
    for grant in grants_listed(now=now):
        key = (principal_label(grant_principal(grant)), grant.content_object_id)
        granted.setdefault(key, []).append(Held(grant.permission.codename, "grant", grant))
    rows: list[MatrixRow] = []
    for group in groups:
        label = principal_label(group)
        by_topic = [
            (t, [*(Held(r, "role") for r in role_wide[group.pk]), *granted.get((label, t.pk), [])]) for t in topics
        ]
        rows.append(MatrixRow(label, group.name, True, [], role_wide[group.pk], by_topic))
    for person in people:
        label = principal_label(person)
        member_of = sorted(person.groups.all(), key=lambda g: g.name)
        wide = sorted({r for g in member_of for r in role_wide.get(g.pk, [])}, key=RIGHT_RANK.__getitem__)
        cells: list[tuple[Topic, list[Held]]] = []
        for topic in topics:
            cell = [Held(r, "role") for r in wide]
            for group in member_of:
                cell += [
                    Held(held.right, f"group:{group.name}")
                    for held in granted.get((principal_label(group), topic.pk), [])
                    if held.right not in wide
                ]
            cell += granted.get((label, topic.pk), [])
            cells.append((topic, cell))
        rows.append(MatrixRow(label, person.get_username(), False, [g.name for g in member_of], wide, cells))
    return rows
