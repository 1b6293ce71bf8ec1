"""Refused attempts to change something, each written to the audit log once: by a page, the API or the middleware."""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest

from busapp.audit import Actor, audit_record
from busapp.models import AuditAction

# Set on a request whose refusal is written down, so that the middleware does not write it again.
_RECORDED = "refusal_recorded"


def refusal_record(
    *, request: HttpRequest, actor: Actor, action: AuditAction, target: str, reason: str | None = None, **details: str
) -> None:
    """Write one refused attempt (its method, path, and why when known) as ``actor``, once per request."""
    setattr(request, _RECORDED, True)
    said = {"method": request.method or "", "path": request.path}
    if reason is not None:
        said["reason"] = reason
    with transaction.atomic():
        audit_record(actor=actor, action=action, target=target[:200], details={**said, **details})


def refusal_recorded(request: HttpRequest) -> bool:
    """Whether this request's refusal is written down already."""
    return bool(getattr(request, _RECORDED, False))
