"""What the live pages receive: one shape for an event, and the Channels groups each topic's live items go to.

The same shape whether an event comes over the websocket or, after a reconnect, from history
over HTTP.

Events an outsider put on the bus while their topic was sensitive carry ``"not_approved": true``
(nobody approved them); other items leave the key out.
"""

from __future__ import annotations

import json
from typing import Any

from busapp.models import Event, EventStatus, Source

# A payload bigger than this is summarised in live items; the event's record has it whole.
PAYLOAD_BYTES_SHOWN = 4096


def topic_group(topic: str) -> str:
    """The Channels group that live-traffic websockets of a topic join."""
    return f"topic.{topic}"


def dlq_group(topic: str) -> str:
    """The Channels group that dead-letter websockets of a topic join."""
    return f"dlq.{topic}"


def bulk_group(action_id: int) -> str:
    """The Channels group the progress page of one bulk action joins."""
    return f"bulk.{action_id}"


def live_message(kind: str, topic: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The one Channels message a batch of a topic's live items travels in, each item encoded once.

    Every socket of the topic sends the same items: encoded here once, a frame is the
    sockets' own few bytes around the texts, not 50 encodings of the same objects.
    """
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    return {"type": kind, "topic": topic, "items": [encode(item) for item in items]}


def live_item(event: Event, *, read_from_bus: bool = False) -> dict[str, Any]:
    """One event as a live page shows it (a large payload only summarised).

    An event the tap read from the bus is published, whatever its row said a moment before.
    """
    return _item(
        envelope_id=event.envelope_id,
        topic=event.topic.name,
        event_type=event.event_type.name,
        timestamp=event.timestamp.timestamp(),
        source=event.source,
        publisher=event.publisher_name,
        status=EventStatus.PUBLISHED.value if read_from_bus else event.status,
        payload=event.payload,
        envelope_size=len(event.envelope),
        not_approved=event.not_approved,
    )


def live_item_read(envelope: dict[str, Any], size: int, *, topic: str, source: str, publisher: str) -> dict[str, Any]:
    """A recorded event as a live page shows it, built from the envelope the tap read off the bus (no row loaded).

    Who published it (source, publisher) comes from its record: an envelope from outside
    the dashboard need not say. Only such an outsider's event can be unapproved, so only for
    those is the record asked (the second copy of an event read both off Pub/Sub and its stream).
    """
    not_approved = (
        source == Source.EXTERNAL and Event.objects.filter(envelope_id=envelope["id"], not_approved=True).exists()
    )
    return _item(
        envelope_id=envelope["id"],
        topic=topic,
        event_type=envelope["type"],
        timestamp=envelope["timestamp"],
        source=source,
        publisher=publisher,
        status=EventStatus.PUBLISHED.value,
        payload=envelope["payload"],
        envelope_size=size,
        not_approved=not_approved,
    )


def _item(
    *,
    envelope_id: str,
    topic: str,
    event_type: str,
    timestamp: float,
    source: str,
    publisher: str,
    status: str,
    payload: Any,
    envelope_size: int,
    not_approved: bool,
) -> dict[str, Any]:
    """The live item's fields, the payload left out past PAYLOAD_BYTES_SHOWN (the envelope holds it, so bounds it)."""
    item = {
        "id": envelope_id,
        "topic": topic,
        "type": event_type,
        "timestamp": timestamp,
        "source": source,
        "publisher": publisher,
        "status": status,
    }
    if not_approved:
        item["not_approved"] = True
    if envelope_size <= PAYLOAD_BYTES_SHOWN:
        item["payload"] = payload
    else:
        item["payload_omitted_bytes"] = envelope_size
    return item
