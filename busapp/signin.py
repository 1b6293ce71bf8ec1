"""Sign-in throttling (django-axes): when a lock-out ends, and its audit entry.

django-axes counts failed sign-ins per account and per address and refuses sign-in once
either reaches ``AXES_FAILURE_LIMIT``; every failure during a lock-out starts its cool-off
again. Here the lock-out is written to the audit log once, when it begins (not at every
refused attempt after it, which an attacker could repeat without end).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from axes.models import AccessAttempt
from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.http import HttpRequest
from django.utils import timezone

from busapp.audit import audit_record
from busapp.models import AuditAction

THROTTLE_ACTOR = "system:signin-throttle"


def signin_attempted_at(request: HttpRequest) -> dt.datetime:
    """When this request's sign-in was attempted (axes stamps it), else now."""
    attempted: dt.datetime | None = getattr(request, "axes_attempt_time", None)
    return attempted or timezone.now()


def signin_retry_at(request: HttpRequest) -> dt.datetime:
    """When sign-in works again: the cool-off after the failed attempt this request made."""
    cool_off: dt.timedelta = settings.AXES_COOLOFF_TIME
    return signin_attempted_at(request) + cool_off


def _failures_since(since: dt.datetime, **holder: str | None) -> int:
    """Failed sign-ins axes still counts for an account or an address (those in the cool-off before ``since``)."""
    counted = AccessAttempt.objects.filter(attempt_time__gte=since, **holder).aggregate(n=Sum("failures_since_start"))
    return int(counted["n"] or 0)


def signin_lockout_record(*, username: str | None, address: str | None, path: str, attempted_at: dt.datetime) -> None:
    """Write a lock-out to the audit log: whose, from where, how many failures, until when."""
    counted_from = attempted_at - settings.AXES_COOLOFF_TIME  # the window axes counts failures in
    with transaction.atomic():
        audit_record(
            actor=THROTTLE_ACTOR,
            action=AuditAction.SIGNIN_LOCKOUT,
            target=f"user:{username[:150]}" if username else f"address:{address}",
            details={
                "username": username,
                "address": address,
                "path": path,
                "account_failures": _failures_since(counted_from, username=username) if username else 0,
                "address_failures": _failures_since(counted_from, ip_address=address) if address else 0,
                "limit": settings.AXES_FAILURE_LIMIT,
                "until": (attempted_at + settings.AXES_COOLOFF_TIME).isoformat(),
            },
        )


def signin_locked_out(
    sender: Any, *, request: HttpRequest, username: str | None, ip_address: str | None, **kwargs: Any
) -> None:
    """Receiver of axes' ``user_locked_out``: audit the lock-out when it begins."""
    failures = getattr(request, "axes_failures_since_start", None)
    if failures is not None and failures > settings.AXES_FAILURE_LIMIT:
        return  # a refused attempt during a lock-out already written down
    signin_lockout_record(
        username=username, address=ip_address, path=request.path, attempted_at=signin_attempted_at(request)
    )
