"""Reads: which schema version an event is checked against, what is waiting to go out."""

from __future__ import annotations

from busapp.models import Event, EventStatus, EventType, SchemaVersion, Topic
from busapp.validation import EventRejectedError, TopicNotFoundError


def schema_version_active(*, topic: str, event_type: str) -> SchemaVersion:
    """The newest non-deprecated schema version of a topic's event type, or a clear error naming what is unknown."""
    version = (
        SchemaVersion.objects.active()
        .select_related("event_type__topic")
        .filter(event_type__topic__name=topic, event_type__name=event_type)
        .first()
    )
    if version is not None:
        return version
    if not Topic.objects.filter(name=topic).exists():
        raise TopicNotFoundError([{"path": "/topic", "message": f"unknown topic {topic!r}"}])
    known = list(EventType.objects.filter(topic__name=topic).values_list("name", flat=True))
    if event_type in known:
        message = f"event type {event_type!r} on topic {topic!r} has no active schema version"
    else:
        message = f"unknown event type {event_type!r} on topic {topic!r}; known: {', '.join(known) or 'none'}"
    raise EventRejectedError([{"path": "/type", "message": message}])


def topic_get(*, name: str) -> Topic:
    """The topic called ``name``, or an error naming it."""
    topic = Topic.objects.filter(name=name).first()
    if topic is None:
        raise TopicNotFoundError([{"path": "/topic", "message": f"unknown topic {name!r}"}])
    return topic


def pending_event_count() -> int:
    """How many accepted events are still waiting for Redis."""
    return Event.objects.filter(status=EventStatus.PENDING).count()
