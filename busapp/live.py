"""What the live pages receive: one shape for an event, and the Channels groups each topic's live items go to.

The same shape whether an event comes over the websocket or, after a reconnect, from history
over HTTP.

Events an external publisher put on the bus while their topic was sensitive carry
``"not_approved": true`` (nobody approved them); other items leave the key out. A dead letter
goes to both feeds once it is on its ``.dlq``: the dead-letter page's item, and on live traffic
an item of status ``dead-lettered`` that links to it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from busapp.models import DeadLetter, Drift, Event, EventStatus, Receipt, Source

logger = logging.getLogger(__name__)

# A payload bigger than this is summarised in live items; the event's record has it whole.
PAYLOAD_BYTES_SHOWN = 4096
# A dead letter's body as it arrived, cut to this many characters on live traffic.
LETTER_TEXT_SHOWN = 160
DEAD_LETTERED = "dead-lettered"
# Seconds the live pages' announcement of new dead letters may take before it is given up.
ANNOUNCE_SECONDS = 1.0


def topic_group(topic: str) -> str:
    """The Channels group that live-traffic websockets of a topic join."""
    return f"topic.{topic}"


def dlq_group(topic: str) -> str:
    """The Channels group that dead-letter websockets of a topic join."""
    return f"dlq.{topic}"


def subscribers_group(topic: str) -> str:
    """The Channels group that pages following a topic's subscribers join: receipts and drift, as they happen."""
    return f"subscribers.{topic}"


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


def group_message(group: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The message that carries items to a group of either feed (``topic.<name>`` or ``dlq.<name>``)."""
    feed, topic = group.split(".", 1)
    return live_message(_FEED_MESSAGES[feed], topic, items)


_FEED_MESSAGES = {"topic": "bus.events", "dlq": "bus.dead_letters", "subscribers": "bus.subscribers"}


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

    Who published it (source, publisher) comes from its record: an external publisher's
    envelope need not say. Only an external publisher's event can be unapproved, so only for
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


# A rejected receipt's detail, cut to this many characters on live pages (the event's record has it whole).
RECEIPT_DETAIL_SHOWN = 300


def receipt_item(receipt: Receipt) -> dict[str, Any]:
    """A receipt as the live pages show it: who said what about which event, and how long after its publish."""
    event = receipt.event
    return {
        "kind": "receipt",
        "event": event.envelope_id,
        "topic": event.topic.name,
        "type": event.event_type.name,
        "subscriber": receipt.subscriber.name,
        "status": receipt.status,
        "detail": receipt.detail[:RECEIPT_DETAIL_SHOWN],
        "received_at": receipt.received_at.timestamp(),
        "latency": receipt.seconds_after(event.published_at),
    }


def drift_item(drift: Drift) -> dict[str, Any]:
    """A drift opened or cleared, as the live pages show it: who, on which type's value in force, since when."""
    return {
        "kind": "drift",
        "subscriber": drift.subscriber.name,
        "topic": drift.topic.name,
        "type": drift.event_type.name,
        "state": "cleared" if drift.cleared_at else "open",
        "reason": drift.reason,
        "since": drift.since.timestamp(),
        "event": drift.event.envelope_id,
    }


def letter_items(letter: DeadLetter) -> dict[str, dict[str, Any]]:
    """A dead letter's items by Channels group: its row on the dead-letter page, and its line on live traffic."""
    topic = letter.topic.name
    cause = f"{letter.cause_path or '(the whole message)'}: {letter.cause_message}"
    shared = {"letter": letter.pk, "topic": topic, "source": letter.source, "publisher": letter.publisher_name}
    return {
        dlq_group(topic): {**shared, "errors": letter.errors[:3], "received_at": letter.received_at.timestamp()},
        topic_group(topic): {
            **shared,
            "type": letter.event_type_name,
            "timestamp": letter.received_at.timestamp(),
            "status": DEAD_LETTERED,
            "cause": cause,
            "text": letter.raw[:LETTER_TEXT_SHOWN],
        },
    }


def letters_announce(letters: Sequence[DeadLetter]) -> None:
    """Tell the live pages about dead letters now on their ``.dlq``: one group message a feed and topic, best effort."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for letter in letters:
        for group, item in letter_items(letter).items():
            groups[group].append(item)
    groups_announce(groups, lost=f"{len(letters)} dead letter(s) not shown live; /dlq/ has them")


def receipts_announce(receipts: Sequence[Receipt]) -> None:
    """Tell the pages following the receipts' topics: one group message a topic, best effort."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for receipt in receipts:
        groups[subscribers_group(receipt.event.topic.name)].append(receipt_item(receipt))
    groups_announce(groups, lost=f"{len(receipts)} receipt(s) not shown live; the event records have them")


def groups_announce(groups: dict[str, list[dict[str, Any]]], *, lost: str) -> None:
    """Send each group its items in one message, best effort; ``lost`` is logged when that fails.

    Called from sync code: a request's commit hook or the worker's database thread (no event
    loop there: the sends run to the end before it returns), or code run inside a loop's own
    thread (the sends are left to that loop).
    """
    layer = get_channel_layer()
    if layer is None or not groups:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        async_to_sync(_group_sends)(layer, groups, lost)
        return
    task = loop.create_task(_group_sends(layer, groups, lost))
    _SENDING.add(task)
    task.add_done_callback(_SENDING.discard)


_SENDING: set[asyncio.Task[None]] = set()  # sends left to a running loop, kept until they finish


async def _group_sends(layer: Any, groups: dict[str, list[dict[str, Any]]], lost: str) -> None:
    """One ``group_send`` a group, ANNOUNCE_SECONDS in all; a failure is logged, never raised.

    A web process runs its sync views in one thread: a Channels layer whose Redis stopped
    answering must not hold that thread for the layer's own 10 s timeout.
    """
    try:
        async with asyncio.timeout(ANNOUNCE_SECONDS):
            for group, items in groups.items():
                await layer.group_send(group, group_message(group, items))
    except Exception:  # TimeoutError included: what was announced is kept, the pages read it on load
        logger.exception(lost)
