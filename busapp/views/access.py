"""Who is asking, and whether they hold the right a page needs (a refused publish, approval or replay is audited)."""

from __future__ import annotations

from typing import NoReturn

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.shortcuts import get_object_or_404

from busapp.actions.refusals import refusal_record
from busapp.models import AuditAction, Topic
from busapp.permissions import APPROVE_TOPIC, MANAGE_TOPIC, PUBLISH_TOPIC, topic_right_held

# A refused attempt at one of these is written to the audit log, with this action name.
_REFUSALS_AUDITED = {
    PUBLISH_TOPIC: AuditAction.PUBLISH_REFUSED,
    APPROVE_TOPIC: AuditAction.APPROVAL_REFUSED,
    MANAGE_TOPIC: AuditAction.MANAGE_REFUSED,
}


def signed_in_user(request: HttpRequest) -> User:
    """The signed-in person (every page but the health check requires one)."""
    if not isinstance(request.user, User):  # login_required stands before every caller
        raise PermissionDenied("sign in first")
    return request.user


def topic_with_right(request: HttpRequest, name: str, right: str) -> Topic:
    """The topic, if the person holds ``right`` on it; otherwise 403, audited for the rights that change things."""
    topic = get_object_or_404(Topic, name=name)
    user = signed_in_user(request)
    if topic_right_held(user, right, topic):
        return topic
    message = f"you do not hold {right} on topic {name}"
    if right in _REFUSALS_AUDITED:
        refuse_audited(request, _REFUSALS_AUDITED[right], f"topic:{name}", message, missing_right=right)
    raise PermissionDenied(message)


def refuse_audited(request: HttpRequest, action: AuditAction, target: str, message: str, **details: str) -> NoReturn:
    """Write the refused attempt to the audit log, then answer 403 with ``message``."""
    refusal_record(
        request=request, actor=signed_in_user(request), action=action, target=target, reason=message, **details
    )
    raise PermissionDenied(message)
