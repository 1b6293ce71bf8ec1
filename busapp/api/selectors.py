"""Reads for the API: topics with their schemas, event types and versions, events, open dead letters."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from django.contrib.auth.models import User
from django.db.models import Max, OuterRef, Prefetch, Q, QuerySet, Subquery
from rest_framework import exceptions

from busapp.api.authentication import ServiceCaller
from busapp.errors import CatchUpRefusedError, HistoryQueryError
from busapp.models import (
    DeadLetter,
    DeadLetterStatus,
    Event,
    EventStatus,
    EventType,
    Receipt,
    SchemaVersion,
    SchemaVersionState,
    Topic,
)
from busapp.paging import DAMAGED_LINK, Keyset
from busapp.permissions import PUBLISH_TOPIC
from busapp.selectors import topic_names_with_right


def topics_with_schemas(topics: QuerySet[Topic]) -> QuerySet[Topic]:
    """The topics with their event types and each type's active schema versions (``active_versions``)."""
    versions = Prefetch("schema_versions", queryset=SchemaVersion.objects.active(), to_attr="active_versions")
    event_types = Prefetch("event_types", queryset=EventType.objects.order_by("name").prefetch_related(versions))
    return topics.order_by("name").prefetch_related(event_types)


def topic_names_publishable(caller: User | ServiceCaller, topics: Sequence[Topic]) -> set[str]:
    """Which of these topics the caller may publish to, in one query at most."""
    if isinstance(caller, ServiceCaller):
        return {topic.name for topic in topics} if caller.token.can_publish else set()
    return topic_names_with_right(caller, PUBLISH_TOPIC, Topic.objects.filter(pk__in=[topic.pk for topic in topics]))


def event_type_on(topic: Topic, name: str) -> EventType:
    """The topic's event type called ``name``; 404 naming the types there are."""
    event_type = None if "\x00" in name else EventType.objects.filter(topic=topic, name=name).first()
    if event_type is None:
        known = ", ".join(EventType.objects.filter(topic=topic).order_by("name").values_list("name", flat=True))
        raise exceptions.NotFound(f"unknown event type {name!r} on topic {topic.name!r}; known: {known or 'none'}")
    return event_type


def event_types_with_version_in_force(topic: Topic) -> QuerySet[EventType]:
    """The topic's event types by name, each with ``version_in_force``: its newest version not disabled (or None)."""
    usable = ~Q(schema_versions__state=SchemaVersionState.DISABLED)
    in_force = Max("schema_versions__version", filter=usable)
    return (
        EventType.objects.filter(topic=topic)
        .select_related("topic")
        .annotate(version_in_force=in_force)
        .order_by("name")
    )


def event_record(*, envelope_id: str, topics: QuerySet[Topic]) -> Event | None:
    """The event with this envelope id if it is on one of ``topics``, with the dead letter it replays (if any)."""
    if "\x00" in envelope_id:  # never in an id, and PostgreSQL refuses it in a query
        return None
    letters = DeadLetter.objects.filter(replay_event=OuterRef("pk")).values("pk")[:1]
    return (
        Event.objects.filter(envelope_id=envelope_id, topic__in=topics)
        .select_related("topic", "event_type", "schema_version")
        .annotate(replayed_from_letter=Subquery(letters))
        .first()
    )


# A catch-up reads a topic oldest first by (timestamp, id): the index event_topic_time after its topic, from a key.
# Its positions are envelope ids the caller names, not signed links: the salt is never used.
CATCH_UP_KEYSET = Keyset((("timestamp", dt.datetime), ("id", int)), salt="busapp.api.catch_up")


@dataclass
class CatchUpPage:
    """A topic's published events after a position, oldest first; where the next page starts, and if one is there."""

    events: list[Event]
    next: str | None
    more: bool


def events_published_after(*, topic: Topic, after: str | None, type_name: str | None) -> QuerySet[Event]:
    """The topic's published events after the event ``after`` (None: from the oldest), of one type if named.

    In the envelopes' order (timestamp, then id), by a range on the index event_topic_time,
    never a sort of the topic. ``after`` may be any event of the topic, pending ones too; one
    the topic never carried, and a type it does not have, are refused naming the parameter.
    """
    events = Event.objects.filter(topic=topic, status=EventStatus.PUBLISHED).only("envelope_id", "envelope")
    if type_name is not None:
        events = events.filter(event_type=_query_event_type(topic, type_name))
    if after is not None:
        events = CATCH_UP_KEYSET.beyond(events, _catch_up_position(topic, after), older=False)
    return CATCH_UP_KEYSET.ordered(events, older=False)


def catch_up_page(*, topic: Topic, after: str | None, type_name: str | None, size: int) -> CatchUpPage:
    """A page of ``events_published_after``: ``next`` is its last envelope id (``after`` when it is empty)."""
    found = list(events_published_after(topic=topic, after=after, type_name=type_name)[: size + 1])
    page = found[:size]
    return CatchUpPage(page, next=page[-1].envelope_id if page else after, more=len(found) > size)


def _catch_up_position(topic: Topic, envelope_id: str) -> tuple[dt.datetime, int]:
    """The key of the topic's event ``envelope_id``; 422 at /query/after when the topic has none (another's: none)."""
    key = Event.objects.filter(topic=topic, envelope_id=envelope_id).values_list("timestamp", "id").first()
    if key is None:
        message = f"topic {topic.name!r} has no event {envelope_id!r}: send an envelope id this topic carried"
        raise CatchUpRefusedError([{"path": "/query/after", "message": message}])
    return key


def _query_event_type(topic: Topic, name: str) -> EventType:
    """The topic's event type called ``name``; 422 at /query/type naming the types there are."""
    try:
        return event_type_on(topic, name)
    except exceptions.NotFound as missing:
        raise CatchUpRefusedError([{"path": "/query/type", "message": str(missing.detail)}]) from None


# Open dead letters go by (received_at, id), newest first.
DEAD_LETTER_KEYSET = Keyset((("received_at", dt.datetime), ("id", int)), salt="busapp.api.dead_letters.cursor")


@dataclass
class DeadLetterPage:
    """A page of open dead letters, newest first, and the cursor of the next (older) page."""

    dead_letters: list[DeadLetter]
    next: str | None


def dead_letters_open_page(
    topics: QuerySet[Topic], *, topic: str | None, cursor: str | None, size: int
) -> DeadLetterPage:
    """Open dead letters on these topics (or one of them), newest first, from a cursor; by keyset, never OFFSET."""
    letters = DeadLetter.objects.filter(topic__in=topics, status=DeadLetterStatus.OPEN).select_related("topic")
    if topic:
        letters = letters.filter(topic__name=topic)
    position = DEAD_LETTER_KEYSET.decode(cursor) if cursor else None
    if position is not None and not position.older:
        raise HistoryQueryError([{"path": "cursor", "message": DAMAGED_LINK}])
    page = DEAD_LETTER_KEYSET.page(letters, position, size=size)
    return DeadLetterPage(page.rows, page.older)


def schema_version_on(event_type: EventType, number: int) -> SchemaVersion:
    """The type's version ``number``; 404 naming the numbers there are."""
    version = event_type.schema_versions.filter(version=number).first()
    if version is None:
        known = ", ".join(
            f"v{n}" for n in event_type.schema_versions.order_by("version").values_list("version", flat=True)
        )
        raise exceptions.NotFound(f"{event_type} has no version {number}; it has {known or 'none'}")
    return version


def event_receipts(event: Event) -> QuerySet[Receipt]:
    """The event's receipts by subscriber name (its envelope and payload, up to 64 KiB each, are not read again)."""
    return (
        Receipt.objects.filter(event=event)
        .select_related("event", "subscriber")
        .defer("event__envelope", "event__payload")
        .order_by("subscriber__name")
    )
