"""``Idempotency-Key``: a publish sent again with the same key gets its first answer and publishes nothing more."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import status

from busapp.api.errors import ApiError
from busapp.models import IdempotencyKey

# A key is remembered at least this long; an older one may be used again for a new request.
KEY_LIFETIME = IdempotencyKey.LIFETIME
KEY_MAX_LENGTH = 255

Outcome = TypeVar("Outcome")


@dataclass(frozen=True)
class Answer:
    """An API answer as it is kept for replays: status and JSON body."""

    status: int
    body: dict[str, Any]


def request_sha256(*, method: str, path: str, body: bytes) -> str:
    """What makes two requests "the same": method, path and body, byte for byte."""
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).hexdigest()


def key_check(key: str) -> None:
    """Refuse a key no client should send (empty or too long)."""
    if not key or len(key) > KEY_MAX_LENGTH:
        message = f"must be 1 to {KEY_MAX_LENGTH} characters; a UUID per logical request is a good key"
        raise ApiError([{"path": "/headers/Idempotency-Key", "message": message}], status.HTTP_400_BAD_REQUEST)


def key_kept(*, actor_name: str, key: str) -> IdempotencyKey | None:
    """The caller's kept key of that name, expired or not (reads only)."""
    return IdempotencyKey.objects.filter(actor_name=actor_name, key=key).first()


def key_expired(kept: IdempotencyKey) -> bool:
    """Whether a kept key is older than KEY_LIFETIME, and so free to name a new request."""
    return kept.created_at < timezone.now() - KEY_LIFETIME


def answer_replayed(kept: IdempotencyKey, *, key: str, fingerprint: str) -> Answer:
    """The first answer to a key sent again; 409 if it came with another request (reads only)."""
    if kept.request_sha256 != fingerprint:
        message = (
            f"key {key!r} was used at {kept.created_at:%Y-%m-%d %H:%M:%S} UTC for a different request: "
            "use a new key for a new request"
        )
        raise ApiError([{"path": "/headers/Idempotency-Key", "message": message}], status.HTTP_409_CONFLICT)
    return Answer(kept.response_status, kept.response_body)


def publish_once(
    *,
    actor_name: str,
    key: str | None,
    fingerprint: str,
    publish: Callable[[], Outcome],
    answer: Callable[[Outcome], Answer],
) -> Answer:
    """Run ``publish`` and answer; with a key, at most once: a repeat gets the first answer.

    The key is saved in the publish's own transaction, so there is never an event without
    its key nor a key without its event; two identical requests at once meet at the unique
    constraint and the loser answers with the winner's answer. The answer is saved with the
    event still pending and updated once the commit has sent it.
    """
    if key is None:
        outcome = publish()
        return answer(outcome)
    key_check(key)
    kept = key_kept(actor_name=actor_name, key=key)
    if kept is not None and key_expired(kept):
        kept.delete()  # bookkeeping, not audited: the old answer is forgotten, the key names this request
    elif kept is not None:
        return answer_replayed(kept, key=key, fingerprint=fingerprint)
    try:
        with transaction.atomic():
            outcome = publish()
            provisional = answer(outcome)
            row = IdempotencyKey.objects.create(
                key=key,
                actor_name=actor_name,
                request_sha256=fingerprint,
                response_status=provisional.status,
                response_body=provisional.body,
            )
    except IntegrityError:  # the same key at the same moment: the other request won
        kept = key_kept(actor_name=actor_name, key=key)
        if kept is None:
            raise
        return answer_replayed(kept, key=key, fingerprint=fingerprint)
    final = answer(outcome)  # the commit has sent it (or Redis was down and it is still pending)
    if final != provisional:
        IdempotencyKey.objects.filter(pk=row.pk).update(response_status=final.status, response_body=final.body)
    return final
