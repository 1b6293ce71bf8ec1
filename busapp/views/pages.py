"""The dashboard, topics, one event's record, and the health check."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from busapp.actions.registry import (
    CHANGE_EVENT_TYPE,
    CHANGE_SCHEMA_VERSION,
    event_type_compatibility_set,
    may_add_versions,
)
from busapp.delivery import topic_delivery_read
from busapp.errors import BusInputError, FieldError, RightRefusedError
from busapp.health import health_check, workers_read
from busapp.models import AuditAction, CompatibilityMode, CompatibilityPolicy, EventType, SchemaVersionState, Topic
from busapp.permissions import MANAGE_ACCESS, PUBLISH_TOPIC, VIEW_TOPIC, topic_right_held
from busapp.schema_forms import form_layout
from busapp.selectors import (
    CHART_RANGES,
    dead_letters_open_by_topic,
    dead_letters_open_count,
    event_types_with_active_versions,
    events_per_bucket,
    pending_event_count,
    publish_requests_for_approver,
    publish_requests_open,
    recent_events,
    schema_versions_by_type,
    topic_summaries,
    topics_visible_to,
    version_requests_waiting,
)
from busapp.version_counts import version_event_counts
from busapp.views.access import refuse_audited, signed_in_user, topic_with_right
from busapp.views.applied import drifting_context, in_force_context


@login_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    """The topics this person may see with their recent activity, events still pending, open dead letters."""
    user = signed_in_user(request)
    topics = topics_visible_to(user)
    summaries = topic_summaries(user, topics)
    to_approve = publish_requests_for_approver(user)
    mine_to_decide = {waiting.pk for waiting in to_approve}
    context = {
        "summaries": summaries,
        "pending_events": pending_event_count(),
        "open_dead_letters": sum(summary.open_dead_letters for summary in summaries),
        "to_approve": to_approve,
        # Each request listed once: those waiting for this person's decision are above.
        "waiting": [waiting for waiting in publish_requests_open(topics) if waiting.pk not in mine_to_decide],
        # Bus admins see every worker's heartbeat and the state of its loops.
        "show_workers": user.has_perm(f"busapp.{MANAGE_ACCESS}"),
    }
    if context["show_workers"]:
        context["workers"] = workers_read()
    context.update(drifting_context(topics))
    context["topic_names"] = [summary.topic.name for summary in summaries]
    return render(request, "dashboard.html", context)


@login_required
@require_GET
def dashboard_series(request: HttpRequest) -> JsonResponse:
    """The dashboard charts' data: events per topic per bucket over ``range`` (1h, 24h, 7d), open dead letters."""
    chosen = request.GET.get("range") or "1h"
    span = CHART_RANGES.get(chosen)
    if span is None:
        message = f"is not a range the chart has: use one of {', '.join(CHART_RANGES)}"
        return JsonResponse({"errors": [{"path": "/range", "message": message}]}, status=400)
    topics = topics_visible_to(signed_in_user(request))
    buckets, events = events_per_bucket(topics, span)
    return JsonResponse(
        {
            "range": chosen,
            "title": span.title,
            "bucket_seconds": int(span.step.total_seconds()),
            "buckets": [bucket.isoformat() for bucket in buckets],
            "events": events,
            "dead_letters_open": dead_letters_open_by_topic(topics),
        }
    )


@login_required
@require_GET
def topic_list(request: HttpRequest) -> HttpResponse:
    """Every topic this person may see."""
    user = signed_in_user(request)
    return render(request, "topics/list.html", {"summaries": topic_summaries(user, topics_visible_to(user))})


@login_required
@require_GET
def topic_detail(request: HttpRequest, name: str) -> HttpResponse:
    """One topic: its event types with their active schema, readable, their versions, and its newest events."""
    return _topic_page(request, topic_with_right(request, name, VIEW_TOPIC))


def _topic_page(
    request: HttpRequest, topic: Topic, *, refused: tuple[str, list[FieldError]] | None = None, status: int = 200
) -> HttpResponse:
    """The topic page; ``refused`` is (event type, problems) of a compatibility change it shows at its form."""
    pairs = event_types_with_active_versions(topic=topic)
    versions = schema_versions_by_type(event_type for event_type, _ in pairs)
    counts = version_event_counts(version for listed in versions.values() for version in listed)
    waiting = version_requests_waiting(topic)
    types = [
        {
            "event_type": event_type,
            "version": version,
            "layout": form_layout(version) if version else None,
            "versions": [(version, counts[version.pk]) for version in versions.get(event_type.pk, [])],
            "refused": refused[1] if refused and refused[0] == event_type.name else [],
            "asked": request.POST if refused and refused[0] == event_type.name else {},
            "waiting": waiting.get(event_type.pk),
        }
        for event_type, version in pairs
    ]
    user = signed_in_user(request)
    context = {
        "topic": topic,
        "types": types,
        "events": recent_events(topic=topic),
        "can_publish": topic_right_held(user, PUBLISH_TOPIC, topic),
        "open_dead_letters": dead_letters_open_count([topic]),
        "delivery": topic_delivery_read(topic),
        "may_set_compatibility": user.has_perm(CHANGE_EVENT_TYPE),
        "may_add_versions": may_add_versions(user, topic),
        "may_change_states": user.has_perm(CHANGE_SCHEMA_VERSION),
        "states": SchemaVersionState.choices,
        "modes": CompatibilityMode.choices,
        "policies": CompatibilityPolicy.choices,
    }
    context.update(in_force_context(topic))
    return render(request, "topics/detail.html", context, status=status)


@login_required
@require_POST
def event_type_compatibility(request: HttpRequest, name: str, type_name: str) -> HttpResponse:
    """A bus admin sets an event type's compatibility mode and policy, with a reason (audited)."""
    topic = topic_with_right(request, name, VIEW_TOPIC)
    event_type = get_object_or_404(EventType, topic=topic, name=type_name)
    try:
        event_type_compatibility_set(
            event_type=event_type,
            mode=request.POST.get("mode", ""),
            policy=request.POST.get("policy", ""),
            reason=request.POST.get("reason", ""),
            actor=signed_in_user(request),
        )
    except RightRefusedError as refused:
        target, message = f"event_type:{event_type}", refused.errors[0]["message"]
        refuse_audited(request, AuditAction.EVENT_TYPE_COMPATIBILITY_REFUSED, target, message)
    except BusInputError as refused:
        return _topic_page(request, topic, refused=(event_type.name, refused.errors), status=400)
    mode, policy = request.POST["mode"], request.POST["policy"]
    messages.success(request, f"{event_type.name}: new versions are checked under {mode} ({policy}).")
    return redirect("topic-detail", topic.name)


@require_GET
async def health(request: HttpRequest) -> JsonResponse:
    """For load balancers and operators, in 3 s: 503 unless the database writes, Redis answers and a worker beats."""
    report = await health_check()
    return JsonResponse(report.as_json(), status=200 if report.ok else 503)
