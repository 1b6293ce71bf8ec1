"""A previewed publish, signed: the confirm step publishes exactly what the person saw, and only once.

The preview page carries one signed token: who previewed, the topic, event type, payload and
the envelope id chosen at preview. The id doubles as the one-time token: history refuses a
second event with the same envelope id, so a form posted twice publishes once.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from django.core import signing

from busapp.errors import PreviewInvalidError
from busapp.publishing import envelope_uuid

_SALT = "busapp.publish-preview"
# A preview older than this is refused; the person previews again and sees current values.
MAX_AGE_SECONDS = 60 * 60


@dataclass(frozen=True)
class Preview:
    """What the person saw on the preview page and agreed to publish."""

    topic: str
    event_type: str
    payload: dict[str, Any]
    envelope_id: uuid.UUID
    effective_at: dt.datetime | None = None  # a scheduled publish's time; None: at once


def preview_sign(
    *, user_id: int, topic: str, event_type: str, payload: dict[str, Any], effective_at: dt.datetime | None = None
) -> tuple[str, Preview]:
    """A new preview with its own envelope id, and the token that carries it to the confirm step."""
    preview = Preview(topic, event_type, payload, envelope_uuid(), effective_at)
    data = {"u": user_id, "t": topic, "e": event_type, "p": payload, "id": str(preview.envelope_id)}
    if effective_at is not None:
        data["at"] = effective_at.isoformat()
    return signing.dumps(data, salt=_SALT, compress=True), preview


def preview_read(token: str, *, user_id: int, topic: str) -> Preview:
    """The preview a token carries; refuse one that was changed, is too old, or belongs to someone else."""
    try:
        data = signing.loads(token, salt=_SALT, max_age=MAX_AGE_SECONDS)
    except signing.SignatureExpired:
        raise PreviewInvalidError("this preview is more than an hour old: preview the event again") from None
    except signing.BadSignature:
        raise PreviewInvalidError(
            "the confirmation does not match any preview: the page was changed after it was shown; start again"
        ) from None
    if data.get("u") != user_id or data.get("t") != topic:
        raise PreviewInvalidError("this preview was made by someone else or for another topic: start again")
    effective_at = dt.datetime.fromisoformat(data["at"]) if data.get("at") else None
    return Preview(data["t"], data["e"], data["p"], uuid.UUID(data["id"]), effective_at)
