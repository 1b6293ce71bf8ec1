"""Service tokens: issued with their secret shown once, revoked, and checked on every API request."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Sequence

from django.db import transaction
from django.utils import timezone

from busapp.audit import Actor, actor_parts, audit_record
from busapp.errors import ActionRefusedError, TokenInvalidError
from busapp.models import AuditAction, ServiceToken, Subscriber, Topic

TOKEN_PREFIX = "hms"  # noqa: S105  # the tokens' fixed first part, not a secret
# last_used_at is written at most this often per token, so a busy service costs no write per request.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


def token_sha256(text: str) -> str:
    """The digest kept in place of a token's text."""
    return hashlib.sha256(text.encode()).hexdigest()


@transaction.atomic
def service_token_create(
    *,
    name: str,
    topics: Sequence[Topic],
    actor: Actor,
    can_publish: bool = True,
    can_view: bool = True,
    expires_at: dt.datetime | None = None,
    subscriber: Subscriber | None = None,
) -> tuple[ServiceToken, str]:
    """Issue a token for a service scoped to ``topics``; return it and its text, which is never shown again.

    A token bound to a ``subscriber`` posts that subscriber's receipts (and no other's); it needs
    no publish right for them, only its topics.
    """
    if not topics:
        raise ActionRefusedError([{"path": "/topics", "message": "name at least one topic the token may use"}])
    if not (can_publish or can_view):
        raise ActionRefusedError([{"path": "/rights", "message": "give the token publish, view or both"}])
    if expires_at is not None and expires_at <= timezone.now():
        raise ActionRefusedError([{"path": "/expires_at", "message": "is in the past: choose a later time or none"}])
    prefix = secrets.token_hex(4)
    text = f"{TOKEN_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    token = ServiceToken(
        name=name,
        prefix=prefix,
        secret_sha256=token_sha256(text),
        can_publish=can_publish,
        can_view=can_view,
        expires_at=expires_at,
        created_by=actor_parts(actor)[0],
        subscriber=subscriber,
    )
    token.full_clean(exclude=["topics"])
    token.save()
    token.topics.set(topics)
    audit_record(
        actor=actor,
        action=AuditAction.SERVICE_TOKEN_CREATE,
        target=f"service_token:{prefix}",
        details={
            "service": name,
            "topics": sorted(topic.name for topic in topics),
            "can_publish": can_publish,
            "can_view": can_view,
            "expires_at": expires_at.isoformat() if expires_at else None,
            "subscriber": subscriber.name if subscriber else None,
        },
    )
    return token, text


@transaction.atomic
def service_token_revoke(*, prefix: str, actor: Actor) -> ServiceToken:
    """Revoke a token for good: every later request with it is refused."""
    token = ServiceToken.objects.select_for_update().filter(prefix=prefix).first()
    if token is None:
        raise ActionRefusedError([{"path": "/prefix", "message": f"no service token has the prefix {prefix!r}"}])
    if token.revoked_at is not None:
        raise ActionRefusedError(
            [{"path": "/prefix", "message": f"token {token} was already revoked at {token.revoked_at:%Y-%m-%d %H:%M}"}]
        )
    token.revoked_at = timezone.now()
    token.revoked_by = actor_parts(actor)[0]
    token.save(update_fields=["revoked_at", "revoked_by"])
    audit_record(
        actor=actor,
        action=AuditAction.SERVICE_TOKEN_REVOKE,
        target=f"service_token:{prefix}",
        details={"service": token.name},
    )
    return token


def service_token_authenticate(*, text: str) -> ServiceToken:
    """The live token whose text this is, its use noted (at most once a minute); TokenInvalidError otherwise."""
    parts = text.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1] or not parts[2]:
        raise TokenInvalidError("the bearer token is malformed: it looks like 'hms_<prefix>_<secret>'; copy it whole")
    token = ServiceToken.objects.filter(prefix=parts[1]).first()
    if token is None or not hmac.compare_digest(token.secret_sha256, token_sha256(text)):
        raise TokenInvalidError("the bearer token is not recognised: check it was copied whole, or ask for a new one")
    now = timezone.now()
    if token.revoked_at is not None:
        raise TokenInvalidError(
            f"token {token} was revoked at {token.revoked_at:%Y-%m-%d %H:%M} UTC: ask for a new one"
        )
    if token.expires_at is not None and token.expires_at <= now:
        raise TokenInvalidError(f"token {token} expired at {token.expires_at:%Y-%m-%d %H:%M} UTC: ask for a new one")
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        ServiceToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token
