"""What the live pages receive: one shape for an event, whether it comes over the websocket or, after a reconnect,
from history over HTTP; and the Channels groups each topic's live items go to."""

from __future__ import annotations

import json
from typing import Any

from busapp.models import Event, EventStatus

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
    item = {
        "id": event.envelope_id,
        "topic": event.topic.name,
        "type": event.event_type.name,
        "timestamp": event.timestamp.timestamp(),
        "source": event.source,
        "publisher": event.publisher_name,
        "status": EventStatus.PUBLISHED.value if read_from_bus else event.status,
    }
    if len(event.envelope) <= PAYLOAD_BYTES_SHOWN:  # the envelope holds the payload, so this bounds it
        item["payload"] = event.payload
    else:
        item["payload_omitted_bytes"] = len(event.envelope)
    return item
