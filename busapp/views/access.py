"""Who is asking, and whether they hold the right a page needs (a refused publish, approval or replay is audited)."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest
from django.shortcuts import get_object_or_404

from busapp.audit import audit_record
from busapp.models import Topic
from busapp.permissions import APPROVE_TOPIC, MANAGE_TOPIC, PUBLISH_TOPIC, topic_right_held

# A refused attempt at one of these is written to the audit log, with this action name.
_REFUSALS_AUDITED = {
    PUBLISH_TOPIC: "publish.refused",
    APPROVE_TOPIC: "approval.refused",
    MANAGE_TOPIC: "manage.refused",
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
    if right in _REFUSALS_AUDITED:
        with transaction.atomic():
            audit_record(
                actor=user,
                action=_REFUSALS_AUDITED[right],
                target=f"topic:{name}",
                details={"method": request.method, "path": request.path, "missing_right": right},
            )
    raise PermissionDenied(f"you do not hold {right} on topic {name}")
