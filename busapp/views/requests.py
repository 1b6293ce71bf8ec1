"""Publishes that wait: a request's page, a second person's decision, cancelling."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from busapp.actions.requests import publish_request_cancel, publish_request_decide
from busapp.errors import BusInputError, FieldError, RightRefusedError
from busapp.models import AuditAction, PublishRequest, PublishRequestStatus, Topic
from busapp.payload_diff import payload_diff
from busapp.permissions import APPROVE_TOPIC, VIEW_TOPIC, topic_right_held
from busapp.selectors import (
    event_in_force,
    publish_requests_decided,
    publish_requests_for_approver,
    publish_requests_of,
    topics_visible_to,
)
from busapp.views.access import refuse_audited, signed_in_user, topic_with_right


@login_required
@require_GET
def requests_list(request: HttpRequest) -> HttpResponse:
    """Publishes that wait or waited: those for me to decide, my own, and the decided ones on my topics."""
    user = signed_in_user(request)
    context = {
        "to_decide": publish_requests_for_approver(user),
        "mine": publish_requests_of(user),
        "decided": publish_requests_decided(topics_visible_to(user)),
    }
    return render(request, "publish/requests.html", context)


@login_required
@require_GET
def request_page(request: HttpRequest, name: str, pk: int) -> HttpResponse:
    """A waiting publish: what it will send, who asked, and (for a second person) approve or reject."""
    topic = topic_with_right(request, name, VIEW_TOPIC)
    waiting = get_object_or_404(
        PublishRequest.objects.select_related("event_type", "requested_by", "decided_by", "event"), pk=pk, topic=topic
    )
    return render(request, "publish/request.html", _request_context(request, topic, waiting))


def _request_context(request: HttpRequest, topic: Topic, waiting: PublishRequest) -> dict[str, Any]:
    """What the request page shows, and which buttons this person gets."""
    user = signed_in_user(request)
    approver = topic_right_held(user, APPROVE_TOPIC, topic)
    in_force = event_in_force(event_type=waiting.event_type)
    return {
        "topic": topic,
        "waiting": waiting,
        "payload_json": json.dumps(waiting.payload, indent=2, ensure_ascii=False),
        "in_force": in_force,
        "diff": payload_diff(in_force.payload if in_force else {}, waiting.payload),
        "own": waiting.requested_by_id == user.pk,
        "can_decide": approver
        and waiting.status == PublishRequestStatus.AWAITING_APPROVAL
        and waiting.requested_by_id != user.pk,
        "can_cancel": waiting.is_open and (waiting.requested_by_id == user.pk or approver),
    }


@login_required
@require_POST
def request_decide(request: HttpRequest, name: str, pk: int) -> HttpResponse:
    """Approve or reject a waiting publish, with a reason; only a second person holding approve_topic."""
    topic = topic_with_right(request, name, APPROVE_TOPIC)
    waiting = get_object_or_404(PublishRequest, pk=pk, topic=topic)
    decision = request.POST.get("decision")
    if decision not in ("approve", "reject"):
        return _request_refused(request, topic, waiting, [{"path": "/decision", "message": "choose approve or reject"}])
    try:
        decided = publish_request_decide(
            request_id=waiting.pk,
            actor=signed_in_user(request),
            approve=decision == "approve",
            reason=request.POST.get("reason", ""),
        )
    except RightRefusedError as refused:  # four eyes, the service's rule: a right nobody holds on their own
        refuse_audited(request, AuditAction.APPROVAL_REFUSED, f"publish_request:{waiting.pk}", _said(refused))
    except BusInputError as refused:
        return _request_refused(request, topic, waiting, refused.errors, form="decide")
    messages.success(request, f"{decided.get_status_display().capitalize()}.")
    return redirect(decided)


@login_required
@require_POST
def request_cancel(request: HttpRequest, name: str, pk: int) -> HttpResponse:
    """Cancel a waiting publish: its requester, or anyone who may approve on the topic."""
    topic = topic_with_right(request, name, VIEW_TOPIC)
    waiting = get_object_or_404(PublishRequest, pk=pk, topic=topic)
    try:
        publish_request_cancel(
            request_id=waiting.pk, actor=signed_in_user(request), reason=request.POST.get("reason", "")
        )
    except RightRefusedError as refused:  # the service's rule: its requester, or an approver of the topic
        target = f"publish_request:{waiting.pk}"
        refuse_audited(request, AuditAction.PUBLISH_REQUEST_CANCEL_REFUSED, target, _said(refused))
    except BusInputError as refused:
        return _request_refused(request, topic, waiting, refused.errors, form="cancel")
    messages.success(request, "Cancelled: it will not be published.")
    return redirect(waiting)


def _said(refused: BusInputError) -> str:
    """A refusal's messages, as one sentence."""
    return "; ".join(error["message"] for error in refused.errors)


def _request_refused(
    request: HttpRequest, topic: Topic, waiting: PublishRequest, errors: list[FieldError], *, form: str = ""
) -> HttpResponse:
    """The request page again: a reason's refusal under the reason field of the form sent, with what was typed."""
    waiting.refresh_from_db()
    at_reason = [error["message"] for error in errors if error["path"] == "/reason"]
    others = "; ".join(error["message"] for error in errors if error["path"] != "/reason")
    context = {
        **_request_context(request, topic, waiting),
        "refusal": others,
        "refused_form": form,
        "reason_errors": at_reason,
        "reason_typed": request.POST.get("reason", ""),
    }
    return render(request, "publish/request.html", context, status=400)
