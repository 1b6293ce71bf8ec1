"""Websockets of the live pages: ``/ws/traffic/`` (events) and ``/ws/dlq/`` (dead letters).

A signed-in person subscribes to topics by name and receives the live items of those they
may view, in frames the bus worker fans out at most every 25 ms per topic. Flow control is
by acknowledgement: at most ``WINDOW`` frames are unacknowledged; what arrives meanwhile
waits in a buffer of ``BUFFER_ITEMS``, and when that overflows the oldest items go and the
next frame says how many were skipped (history has them all). Rights are read once when
the socket opens and again every ``RECHECK_SECONDS``: a revoked topic stops within that, and
the socket closes when its session has ended (signed out, deleted, expired) or the person's
password has changed since it signed in, as Django would refuse the session's next page.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Awaitable, Callable
from importlib import import_module
from typing import Any, ParamSpec, TypeVar, cast

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, load_backend
from django.contrib.auth.models import User
from django.utils.crypto import constant_time_compare

from busapp.live import bulk_group, dlq_group, subscribers_group, topic_group
from busapp.metrics import websocket_clients
from busapp.models import BulkAction, Topic
from busapp.permissions import VIEW_TOPIC, topic_right_held
from busapp.selectors import topics_visible_to

# Close codes the pages understand: sign in again; not yours to watch. Neither is worth retrying.
CLOSE_NOT_SIGNED_IN = 4401
CLOSE_NOT_ALLOWED = 4403


def session_user(user_id: int, session_key: str | None) -> User | None:
    """The person if the session still signs them in now, else None: Django's ``get_user`` rule, read-only.

    The session must still be in the session store (not signed out, deleted or expired), name
    this person and a backend still configured, and carry the password hash the person has
    now (or one made with a SECRET_KEY_FALLBACKS key); the backend refuses a deactivated
    person. Unlike ``django.contrib.auth.get_user`` nothing is flushed or rotated: the page's
    own next request does that.
    """
    if not session_key:
        return None
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    backend_path = session.get(BACKEND_SESSION_KEY)
    if str(session.get(SESSION_KEY)) != str(user_id) or backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    user = load_backend(backend_path).get_user(user_id)
    if not isinstance(user, User):
        return None
    held = session.get(HASH_SESSION_KEY) or ""
    hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    return user if held and any(constant_time_compare(held, current) for current in hashes) else None


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _in_db(function: Callable[_P, _T]) -> Callable[_P, Awaitable[_T]]:
    """Channels' ``database_sync_to_async`` (stale connections closed around each call), with its types kept."""
    return cast(Callable[_P, Awaitable[_T]], database_sync_to_async(function))


@_in_db
def _rights(user_id: int, session_key: str | None) -> tuple[bool, set[str]]:
    """Whether the session still signs the person in, and the topics they may view now (read fresh, never cached)."""
    user = session_user(user_id, session_key)
    if user is None:
        return False, set()
    return True, set(topics_visible_to(user).values_list("name", flat=True))


class SharedRightsReads:
    """A session's rights read at most once a second per process, however many of its sockets ask.

    Each open socket re-reads its person's rights every RECHECK_SECONDS; fifty tabs of one person
    made fifty reads. The tabs of one browser share its session, so a read younger than
    FRESH_SECONDS is shared per session, and a revoked right (or an ended session) still
    stops within RECHECK_SECONDS + FRESH_SECONDS (3 s), inside the promised 5 s.
    """

    FRESH_SECONDS = 1.0

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.reads: dict[tuple[int, str | None], tuple[float, asyncio.Future[tuple[bool, set[str]]]]] = {}
        self.clock = clock  # seconds, rising; the event loop's clock unless a test gives its own

    async def get(self, user_id: int, session_key: str | None) -> tuple[bool, set[str]]:
        """Whether the session still signs the person in, and their rights, as of at most FRESH_SECONDS ago."""
        loop = asyncio.get_running_loop()
        now = self.clock() if self.clock is not None else loop.time()
        key = (user_id, session_key)
        found = self.reads.get(key)
        if found is None or now - found[0] > self.FRESH_SECONDS or found[1].get_loop() is not loop:
            for stale in [old for old, (at, _) in self.reads.items() if now - at > 10 * self.FRESH_SECONDS]:
                del self.reads[stale]
            found = (now, asyncio.ensure_future(_rights(user_id, session_key)))
            self.reads[key] = found
        active, topics = await asyncio.shield(found[1])
        return active, set(topics)  # each socket keeps its own copy


_shared_rights = SharedRightsReads()


@_in_db
def _known_topics(names: list[str]) -> set[str]:
    """Which of these names are topics at all."""
    return set(Topic.objects.filter(name__in=names).values_list("name", flat=True))


class _BusFeedConsumer(AsyncJsonWebsocketConsumer):
    """One live feed: subscribe to topics by name, receive their items in acknowledged frames."""

    frame_type = ""  # what the frames are called: "events" or "dead_letters"
    WINDOW = 4  # frames sent and not yet acknowledged
    BUFFER_ITEMS = 1000  # items held for a client that is behind
    FRAME_ITEMS = 200  # items in one frame at most
    RECHECK_SECONDS = 2.0

    def group(self, topic: str) -> str:
        """The Channels group of a topic's items on this feed."""
        raise NotImplementedError

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Call the message's handler at once.

        Channels first closes stale database connections in the one sync thread, for every
        message of every socket: with 50 live pages that queue, not the network, set the
        latency (bench/live.py). This consumer reaches the database only through
        ``database_sync_to_async``, which closes stale connections itself.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        """Accept a signed-in person (the origin was checked before this); refuse anyone else."""
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_NOT_SIGNED_IN)
            return
        self.user_id: int = user.pk
        self.session_key: str | None = self.scope["session"].session_key
        _, self.allowed = await _rights(self.user_id, self.session_key)
        self.subscribed: set[str] = set()
        self.buffer: deque[tuple[str, str]] = deque()  # (topic, the item's JSON text)
        self.skipped = 0
        self.sent_seq = 0
        self.acked_seq = 0
        await self.accept()
        websocket_clients.labels(self.frame_type).inc()
        self.rechecking = asyncio.ensure_future(self._recheck_rights())

    async def disconnect(self, code: int) -> None:
        """Leave every group and stop reading rights."""
        rechecking = getattr(self, "rechecking", None)
        if rechecking is not None:  # it was accepted
            websocket_clients.labels(self.frame_type).dec()
            rechecking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rechecking
        for topic in list(getattr(self, "subscribed", ())):
            await self.channel_layer.group_discard(self.group(topic), self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        """Parse the client's message; one that is not JSON gets an error frame, the socket stays open."""
        try:
            content = json.loads(text_data or (bytes_data or b"").decode(errors="replace"))
        except ValueError as error:
            await self._error(f"messages are JSON objects; this is not JSON ({error})")
            return
        await self.receive_json(content)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """``{"action": "subscribe"|"unsubscribe", "topics": [...]}`` or ``{"action": "ack", "seq": n}``."""
        action = content.get("action") if isinstance(content, dict) else None
        if action == "ack":
            seq = content.get("seq")
            if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= self.sent_seq:
                await self._error(f"ack: seq must be a frame number from 0 to {self.sent_seq}")
                return
            self.acked_seq = max(self.acked_seq, seq)
            await self._flush()
        elif action in ("subscribe", "unsubscribe"):
            topics = content.get("topics")
            if not isinstance(topics, list) or not all(isinstance(name, str) for name in topics):
                await self._error(f"{action}: topics must be a list of topic names")
                return
            await (self._subscribe(topics) if action == "subscribe" else self._unsubscribe(topics))
        else:
            await self._error('unknown message: send {"action": "subscribe", "topics": [...]}, unsubscribe or ack')

    async def _subscribe(self, topics: list[str]) -> None:
        """Join the groups of the topics this person may view; say which names were refused and why."""
        known = await _known_topics(topics)
        for name in topics:
            if name not in known:
                await self._error(f"unknown topic {name!r}", topic=name)
            elif name not in self.allowed:
                await self._error(f"you may not view topic {name!r}", topic=name)
            elif name not in self.subscribed:
                await self.channel_layer.group_add(self.group(name), self.channel_name)
                self.subscribed.add(name)
        await self.send_json({"type": "subscribed", "topics": sorted(self.subscribed)})

    async def _unsubscribe(self, topics: list[str]) -> None:
        """Leave the groups of these topics."""
        for name in set(topics) & self.subscribed:
            await self.channel_layer.group_discard(self.group(name), self.channel_name)
            self.subscribed.discard(name)
        await self.send_json({"type": "subscribed", "topics": sorted(self.subscribed)})

    async def _recheck_rights(self) -> None:
        """Read the rights again now and then; stop a revoked topic, close for an ended session or inactive person."""
        while True:
            await asyncio.sleep(self.RECHECK_SECONDS)
            active, self.allowed = await _shared_rights.get(self.user_id, self.session_key)
            if not active:
                await self.close(code=CLOSE_NOT_SIGNED_IN)
                return
            for name in sorted(self.subscribed - self.allowed):
                await self.channel_layer.group_discard(self.group(name), self.channel_name)
                self.subscribed.discard(name)
                self.buffer = deque(item for item in self.buffer if item[0] != name)
                await self.send_json({"type": "revoked", "topic": name})

    async def _items_arrived(self, message: dict[str, Any]) -> None:
        """Buffer a group message's items if its topic is still subscribed, dropping the oldest past the limit."""
        topic = message["topic"]
        if topic not in self.subscribed:
            return
        self.buffer.extend((topic, text) for text in message["items"])
        overflow = len(self.buffer) - self.BUFFER_ITEMS
        if overflow > 0:
            for _ in range(overflow):
                self.buffer.popleft()
            self.skipped += overflow
        await self._flush()

    async def _flush(self) -> None:
        """Send buffered items while fewer than WINDOW frames wait for their acknowledgement."""
        while self.buffer and self.sent_seq - self.acked_seq < self.WINDOW:
            count = min(len(self.buffer), self.FRAME_ITEMS)
            items = ",".join(self.buffer.popleft()[1] for _ in range(count))
            self.sent_seq += 1
            # The items arrive encoded (live_message); the frame is written around them.
            frame = f'{{"type":"{self.frame_type}","seq":{self.sent_seq},"skipped":{self.skipped},"items":[{items}]}}'
            self.skipped = 0
            await self.send(text_data=frame)

    async def _error(self, message: str, **extra: Any) -> None:
        """An error frame: the client learns what was wrong; the socket stays open."""
        await self.send_json({"type": "error", "message": message, **extra})


class TrafficConsumer(_BusFeedConsumer):
    """``/ws/traffic/``: events as they go over the bus."""

    frame_type = "events"

    def group(self, topic: str) -> str:
        """Live traffic of a topic."""
        return topic_group(topic)

    async def bus_events(self, message: dict[str, Any]) -> None:
        """A batch the bus worker fanned out (one message per topic per 25 ms at most)."""
        await self._items_arrived(message)


class DeadLetterConsumer(_BusFeedConsumer):
    """``/ws/dlq/``: dead letters as they arrive."""

    frame_type = "dead_letters"

    def group(self, topic: str) -> str:
        """Dead letters of a topic."""
        return dlq_group(topic)

    async def bus_dead_letters(self, message: dict[str, Any]) -> None:
        """A batch of dead letters the bus worker fanned out."""
        await self._items_arrived(message)


class SubscribersConsumer(_BusFeedConsumer):
    """``/ws/subscribers/``: subscribers' receipts and drift on a topic, as they happen."""

    frame_type = "subscribers"

    def group(self, topic: str) -> str:
        """Receipts and drift of a topic."""
        return subscribers_group(topic)

    async def bus_subscribers(self, message: dict[str, Any]) -> None:
        """Receipts the workers recorded, or drift the drift check opened or cleared."""
        await self._items_arrived(message)


@_in_db
def _bulk_progress_for(user_id: int, session_key: str | None, action_id: int) -> dict[str, Any] | None:
    """A bulk action's progress, if it exists, the session still signs the person in and they may view its topic."""
    user = session_user(user_id, session_key)
    action = BulkAction.objects.select_related("topic").filter(pk=action_id).first()
    if user is None or action is None or not topic_right_held(user, VIEW_TOPIC, action.topic):
        return None
    return action.progress()


class BulkProgressConsumer(AsyncJsonWebsocketConsumer):
    """``/ws/dlq/bulk/<id>/``: the progress of one bulk replay or discard, for those who may view its topic.

    Like the feeds, it reads the person's session and right again every RECHECK_SECONDS and
    closes when either has gone.
    """

    RECHECK_SECONDS = _BusFeedConsumer.RECHECK_SECONDS

    async def connect(self) -> None:
        """Accept a viewer of the action's topic and send where it is now."""
        user = self.scope.get("user")
        self.action_id = int(self.scope["url_route"]["kwargs"]["action_id"])
        signed_in = bool(user and user.is_authenticated)
        self.session_key: str | None = self.scope["session"].session_key if signed_in else None
        progress = await _bulk_progress_for(user.pk, self.session_key, self.action_id) if signed_in else None
        if progress is None:
            await self.close(code=CLOSE_NOT_ALLOWED if signed_in else CLOSE_NOT_SIGNED_IN)
            return
        self.user_id: int = user.pk
        self.group = bulk_group(self.action_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "progress", **progress})
        self.rechecking = asyncio.ensure_future(self._recheck_rights())

    async def disconnect(self, code: int) -> None:
        """Leave the action's group and stop reading rights."""
        rechecking = getattr(self, "rechecking", None)
        if rechecking is not None:
            rechecking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rechecking
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def _recheck_rights(self) -> None:
        """Close once the session has ended, the password changed or the view right on the topic went."""
        while True:
            await asyncio.sleep(self.RECHECK_SECONDS)
            if await _bulk_progress_for(self.user_id, self.session_key, self.action_id) is None:
                signed_in, _ = await _shared_rights.get(self.user_id, self.session_key)
                await self.close(code=CLOSE_NOT_ALLOWED if signed_in else CLOSE_NOT_SIGNED_IN)
                return

    async def bulk_progress(self, message: dict[str, Any]) -> None:
        """The worker's word on the action after a tick."""
        await self.send_json({**message, "type": "progress"})
