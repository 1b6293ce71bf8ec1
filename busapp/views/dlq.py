"""The dead-letter workbench: what failed and why, grouped; a letter fixed in the form and replayed, or discarded."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from busapp.actions.dead_letters import (
    bulk_action_cancel,
    bulk_action_start,
    bulk_estimate,
    dead_letter_contents,
    dead_letter_discard,
    dead_letter_replay,
)
from busapp.dead_letter_causes import Cause
from busapp.errors import BusInputError, FieldError
from busapp.models import BulkAction, BulkActionKind, DeadLetter, DeadLetterStatus, SchemaVersion, Source, Topic
from busapp.permissions import MANAGE_TOPIC, VIEW_TOPIC, people_holding, topic_right_held
from busapp.schema_forms import form_layout, submitted_payload
from busapp.selectors import (
    dead_letter_groups,
    dead_letter_neighbours,
    dead_letters_matching,
    dead_letters_recent,
    event_types_with_active_versions,
    letter_cause,
    topic_names_with_right,
    topics_visible_to,
)
from busapp.validation import json_parse
from busapp.views.access import signed_in_user, topic_with_right
from busapp.views.publish import payload_inputs

# A letter's page names at most this many people who may fix it.
FIXERS_NAMED = 8


@login_required
@require_GET
def dead_letter_list(request: HttpRequest) -> HttpResponse:
    """Open dead letters grouped by topic and cause, and the newest ones (live over /ws/dlq/)."""
    user = signed_in_user(request)
    topics = topics_visible_to(user)
    names = list(topics.values_list("name", flat=True))
    shown = request.GET.get("topic") or None
    context = {
        "groups": dead_letter_groups(topics),
        "managed": topic_names_with_right(user, MANAGE_TOPIC, topics),
        "bulk_kinds": BulkActionKind.choices,
        "letters": dead_letters_recent(topics, topic=shown),
        "topics": names,
        "shown": shown,
        "feed_topics": [shown] if shown in names else names,  # the newest table hears what it shows
        "source_labels": dict(Source.choices),
    }
    return render(request, "dlq/list.html", context)


def _letter_page(
    request: HttpRequest,
    letter: DeadLetter,
    *,
    type_name: str | None = None,
    errors: list[FieldError] | None = None,
    refusal: str = "",
    status: int = 200,
) -> HttpResponse:
    """One dead letter: as it arrived, why it failed, its cause's group, and (for managers, while open) the fix form.

    Fresh, the form holds what arrived with the letter's own errors at their fields; a person
    who may not fix it is told who may.
    """
    topic = letter.topic
    can_manage = topic_right_held(signed_in_user(request), MANAGE_TOPIC, topic)
    arrived_type, arrived_payload = dead_letter_contents(letter)
    types = [(kind, version) for kind, version in event_types_with_active_versions(topic=topic) if version]
    chosen = next((v for kind, v in types if kind.name == (type_name or arrived_type)), types[0][1] if types else None)
    is_open = letter.status == DeadLetterStatus.OPEN
    context: dict[str, Any] = {
        "letter": letter,
        "topic": topic,
        "cause": letter_cause(letter),
        "neighbours": dead_letter_neighbours(letter),
        "arrived": _pretty(letter.raw),
        "can_fix": can_manage and is_open and chosen is not None,
        "fixers": [] if can_manage or not is_open else list(people_holding(MANAGE_TOPIC, topic)[:FIXERS_NAMED]),
        "types": types,
        "version": chosen,
        "refusal": refusal,
    }
    if context["can_fix"] and isinstance(chosen, SchemaVersion):
        layout = form_layout(chosen)
        raw_mode = request.POST.get("mode") == "raw" or not layout.drawable
        fresh = request.method != "POST"
        if fresh and chosen.event_type.name == arrived_type:  # its errors are about this type's fields
            errors = [error for error in letter.errors if str(error.get("path", "")).startswith("/payload/")]
        fill = (arrived_payload or {}) if fresh else None
        context.update(payload_inputs(request, layout, raw_mode=raw_mode, payload=fill, errors=errors))
    return render(request, "dlq/detail.html", context, status=status)


def _pretty(raw: str) -> str | None:
    """The letter's body indented for reading, when it is JSON and indenting changes it; None otherwise."""
    body, unreadable = json_parse(raw, around=1)
    if unreadable:
        return None
    pretty = json.dumps(body, indent=2, ensure_ascii=False)
    return pretty if pretty != raw else None


@login_required
@require_GET
def dead_letter_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """A dead letter's page."""
    letter = get_object_or_404(DeadLetter.objects.select_related("topic", "replay_event"), pk=pk)
    topic_with_right(request, letter.topic.name, VIEW_TOPIC)
    return _letter_page(request, letter, type_name=request.GET.get("type"))


@login_required
@require_POST
def dead_letter_replay_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Replay the fixed payload to the letter's topic; a payload that still fails comes back with its errors."""
    letter = get_object_or_404(DeadLetter.objects.select_related("topic"), pk=pk)
    topic_with_right(request, letter.topic.name, MANAGE_TOPIC)
    type_name = request.POST.get("type", "")
    version = next(
        (v for kind, v in event_types_with_active_versions(topic=letter.topic) if kind.name == type_name and v), None
    )
    if version is None:
        refusal = f"type: unknown event type {type_name!r} on topic {letter.topic.name!r}"
        return _letter_page(request, letter, refusal=refusal, status=400)
    raw_mode = request.POST.get("mode") == "raw" or not form_layout(version).drawable
    reading = submitted_payload(form_layout(version), request.POST, raw_mode=raw_mode)
    if reading.errors:
        return _letter_page(request, letter, type_name=type_name, errors=reading.errors, status=400)
    try:
        event = dead_letter_replay(
            letter_id=letter.pk, event_type=type_name, payload=reading.payload, actor=signed_in_user(request)
        )
    except BusInputError as refused:  # still invalid, already closed, or the topic needs an approval
        letter.refresh_from_db()
        by_field = [error for error in refused.errors if error["path"].startswith("/payload")]
        other = "; ".join(f"{e['path'].lstrip('/')}: {e['message']}" for e in refused.errors if e not in by_field)
        return _letter_page(request, letter, type_name=type_name, errors=by_field, refusal=other, status=400)
    messages.success(request, f"Replayed to {letter.topic.name} as a new event; dead letter #{letter.pk} is closed.")
    return redirect(event)


@login_required
@require_POST
def dead_letter_discard_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Discard a dead letter, with the reason the audit log keeps."""
    letter = get_object_or_404(DeadLetter.objects.select_related("topic"), pk=pk)
    topic_with_right(request, letter.topic.name, MANAGE_TOPIC)
    try:
        dead_letter_discard(letter_id=letter.pk, actor=signed_in_user(request), reason=request.POST.get("reason", ""))
    except BusInputError as refused:
        letter.refresh_from_db()
        return _letter_page(request, letter, refusal=str(refused), status=400)
    messages.success(request, f"Dead letter #{letter.pk} discarded.")
    return redirect("dead-letter", pk=letter.pk)


def _selection(request: HttpRequest) -> tuple[Topic, Cause | None, str]:
    """The topic (managed by this person), the cause (None: every open letter) and the action asked."""
    topic = topic_with_right(request, request.POST.get("topic", ""), MANAGE_TOPIC)
    kind = request.POST.get("kind", BulkActionKind.REPLAY)
    cause = None
    if "cause_message" in request.POST:
        # No stored cause holds a NUL (PostgreSQL refuses one in a query): dropped, so nothing matches by it.
        said = [
            request.POST.get(name, "").replace("\x00", "") for name in ("cause_type", "cause_path", "cause_message")
        ]
        cause = Cause(*said)
    return topic, cause, kind if kind in BulkActionKind.values else BulkActionKind.REPLAY


@login_required
@require_POST
def bulk_estimate_view(request: HttpRequest) -> HttpResponse:
    """Before a bulk action: how many dead letters match, and how many pass the current schema."""
    topic, cause, kind = _selection(request)
    estimate = bulk_estimate(letters=dead_letters_matching(topic=topic, cause=cause))
    context = {"topic": topic, "cause": cause, "kind": kind, "estimate": estimate, "rate": 50}
    return render(request, "dlq/bulk_estimate.html", _with_start_kind(context))


def _with_start_kind(context: dict[str, Any]) -> dict[str, Any]:
    """The estimate page's context with what its start button does: a replay nothing would pass offers discard."""
    estimate, kind = context["estimate"], context["kind"]
    nothing_passes = kind == BulkActionKind.REPLAY and estimate.letter_ids and not estimate.passing
    return {**context, "start_kind": BulkActionKind.DISCARD if nothing_passes else kind}


@login_required
@require_POST
def bulk_start_view(request: HttpRequest) -> HttpResponse:
    """Start the bulk action over the selection as it is now; the bus worker runs it."""
    topic, cause, kind = _selection(request)
    letters = dead_letters_matching(topic=topic, cause=cause)
    try:
        rate = int(request.POST.get("rate_per_second", "50"))
    except ValueError:
        rate = 0
    try:
        action = bulk_action_start(
            topic=topic,
            kind=kind,
            letter_ids=[letter.pk for letter in letters],
            actor=signed_in_user(request),
            rate_per_second=rate,
            reason=request.POST.get("reason", ""),
        )
    except BusInputError as refused:
        context = {
            "topic": topic,
            "cause": cause,
            "kind": kind,
            "estimate": bulk_estimate(letters=letters),
            "rate": request.POST.get("rate_per_second", "50"),
            "refusal": str(refused),
        }
        return render(request, "dlq/bulk_estimate.html", _with_start_kind(context), status=400)
    return redirect(action)


@login_required
@require_GET
def bulk_detail_view(request: HttpRequest, pk: int) -> HttpResponse:
    """A bulk action's progress (live over /ws/dlq/bulk/<id>/) and its report, for anyone who views its topic."""
    action = get_object_or_404(BulkAction.objects.select_related("topic", "requested_by"), pk=pk)
    topic = topic_with_right(request, action.topic.name, VIEW_TOPIC)  # auditors follow it too; managers cancel
    can_cancel = topic_right_held(signed_in_user(request), MANAGE_TOPIC, topic)
    return render(request, "dlq/bulk.html", {"action": action, "progress": action.progress(), "can_cancel": can_cancel})


@login_required
@require_POST
def bulk_cancel_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Stop a running bulk action; what it did stays done."""
    action = get_object_or_404(BulkAction.objects.select_related("topic"), pk=pk)
    topic_with_right(request, action.topic.name, MANAGE_TOPIC)
    try:
        bulk_action_cancel(action_id=action.pk, actor=signed_in_user(request))
    except BusInputError as refused:
        messages.error(request, "; ".join(error["message"] for error in refused.errors))
    else:
        messages.success(request, "Cancelled: what was already done stays done.")
    return redirect(action)
