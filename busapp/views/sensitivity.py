"""A topic's ``sensitive`` flag: bus admins request a change, a second bus admin approves or rejects it."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from busapp.actions.sensitivity import (
    may_change_sensitivity,
    sensitivity_label,
    topic_sensitivity_cancel,
    topic_sensitivity_changes,
    topic_sensitivity_decide,
    topic_sensitivity_request,
)
from busapp.errors import BusInputError, RightRefusedError
from busapp.models import AuditAction, Topic, TopicSensitivityChange
from busapp.views.access import refuse_audited, signed_in_user

_NOT_ADMIN = "only bus admins request or decide a change to whether a topic is sensitive"


def _topic_for_bus_admin(request: HttpRequest, name: str) -> Topic:
    """The topic, for a bus admin; anyone else gets 403 (a refused write is audited)."""
    topic = get_object_or_404(Topic, name=name)
    if may_change_sensitivity(signed_in_user(request)):
        return topic
    if request.method == "POST":
        refuse_audited(request, AuditAction.TOPIC_SENSITIVITY_REFUSED, f"topic:{name}", _NOT_ADMIN)
    raise PermissionDenied(_NOT_ADMIN)


def _page(request: HttpRequest, topic: Topic, *, refusal: str = "", status: int = 200) -> HttpResponse:
    """The sensitivity page: the flag now, the change waiting (with the buttons this person gets), earlier ones."""
    changes = list(topic_sensitivity_changes(topic))
    waiting = next((change for change in changes if change.is_open), None)
    user = signed_in_user(request)
    context = {
        "topic": topic,
        "now_label": sensitivity_label(topic.sensitive),
        "asked_label": sensitivity_label(not topic.sensitive),
        "asked_value": "no" if topic.sensitive else "yes",
        "waiting": waiting,
        "own": waiting is not None and waiting.requested_by_id == user.pk,
        "changes": changes,
        "refusal": refusal,
    }
    return render(request, "topics/sensitivity.html", context, status=status)


def _refused(request: HttpRequest, topic: Topic, refused: BusInputError) -> HttpResponse:
    """The page again, 400, saying why the step was refused."""
    topic.refresh_from_db()
    return _page(request, topic, refusal="; ".join(error["message"] for error in refused.errors), status=400)


@login_required
@require_http_methods(["GET", "POST"])
def topic_sensitivity(request: HttpRequest, name: str) -> HttpResponse:
    """GET: the page. POST: request the flag's other value, with a reason."""
    topic = _topic_for_bus_admin(request, name)
    if request.method == "GET":
        return _page(request, topic)
    asked = request.POST.get("sensitive")
    if asked not in ("yes", "no"):
        return _page(request, topic, refusal="sensitive: choose yes or no", status=400)
    try:
        topic_sensitivity_request(
            topic=topic, sensitive=asked == "yes", reason=request.POST.get("reason", ""), actor=signed_in_user(request)
        )
    except BusInputError as refused:
        return _refused(request, topic, refused)
    messages.success(request, "Requested: a second bus admin approves or rejects it; until then nothing changes.")
    return redirect("topic-sensitivity", topic.name)


@login_required
@require_POST
def topic_sensitivity_decision(request: HttpRequest, name: str, pk: int) -> HttpResponse:
    """A second bus admin approves or rejects the waiting change, with a reason."""
    topic = _topic_for_bus_admin(request, name)
    change = get_object_or_404(TopicSensitivityChange, pk=pk, topic=topic)
    user = signed_in_user(request)
    decision = request.POST.get("decision")
    if decision not in ("approve", "reject"):
        return _page(request, topic, refusal="decision: choose approve or reject", status=400)
    try:
        decided = topic_sensitivity_decide(
            change_id=change.pk, actor=user, approve=decision == "approve", reason=request.POST.get("reason", "")
        )
    except RightRefusedError as refused:  # four eyes, the action's rule: refused, and written down
        message = "; ".join(error["message"] for error in refused.errors)
        refuse_audited(request, AuditAction.APPROVAL_REFUSED, f"topic:{topic.name}", message, change=str(change.pk))
    except BusInputError as refused:
        return _refused(request, topic, refused)
    outcome = f"now {sensitivity_label(decided.sensitive)}" if decision == "approve" else "unchanged"
    messages.success(request, f"{decided.get_status_display().capitalize()}: {topic.name} is {outcome}.")
    return redirect("topic-sensitivity", topic.name)


@login_required
@require_POST
def topic_sensitivity_withdraw(request: HttpRequest, name: str, pk: int) -> HttpResponse:
    """The requester cancels their own waiting change."""
    topic = _topic_for_bus_admin(request, name)
    change = get_object_or_404(TopicSensitivityChange, pk=pk, topic=topic)
    try:
        topic_sensitivity_cancel(change_id=change.pk, actor=signed_in_user(request))
    except BusInputError as refused:
        return _refused(request, topic, refused)
    messages.success(request, "Cancelled: nothing changes.")
    return redirect("topic-sensitivity", topic.name)
