"""A type's schema versions on the dashboard: propose one (check, diff, preview, dry run, save), set states, decide.

Bus admins who manage the topic propose versions; a breaking one on a sensitive topic waits
for a second bus admin (``busapp.actions.registry.schema_version_propose``).
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from busapp.actions.registry import (
    may_add_versions,
    schema_version_propose,
    schema_version_request_cancel,
    schema_version_request_decide,
    schema_version_state_set,
)
from busapp.errors import BusInputError, FieldError, RightRefusedError, SchemaInvalidError
from busapp.models import AuditAction, EventType, SchemaVersion, SchemaVersionRequest, SchemaVersionState
from busapp.schema_forms import form_bind, form_layout
from busapp.validation import json_parse, schema_fingerprint
from busapp.version_drafts import DraftCheck, version_draft_check, versions_of
from busapp.views.access import refuse_audited, signed_in_user

_NOT_ALLOWED = "adding schema versions needs a bus admin who manages the topic"


def _type_for_author(request: HttpRequest, name: str, type_name: str) -> EventType:
    """The event type, for someone who may add its versions; anyone else gets 403 (a refused write is audited)."""
    event_type = get_object_or_404(EventType.objects.select_related("topic"), topic__name=name, name=type_name)
    if may_add_versions(signed_in_user(request), event_type.topic):
        return event_type
    if request.method == "POST":
        refuse_audited(request, AuditAction.SCHEMA_VERSION_CREATE_REFUSED, f"schema:{event_type}", _NOT_ALLOWED)
    raise PermissionDenied(_NOT_ALLOWED)


def _starting_text(event_type: EventType) -> str:
    """The editor's first text: the version in force (else the newest) as its author wrote it, or an empty object."""
    versions = versions_of(event_type)
    in_force = [version for version in versions if version.state != SchemaVersionState.DISABLED] or versions
    start = in_force[0].authored if in_force else {"type": "object", "properties": {}}
    return json.dumps(start, indent=2, ensure_ascii=False)


def _preview(check: DraftCheck, schema: Any, text: str) -> dict[str, Any]:
    """The publish form policy staff would get under the draft (what ``publish/_payload_inputs.html`` needs)."""
    draft = SchemaVersion(
        event_type=check.event_type,
        version=check.number,
        schema=schema,
        source=text,
        fingerprint=schema_fingerprint(schema),
    )
    layout = form_layout(draft)
    return {
        "version": draft,
        "layout": layout,
        "form": form_bind(layout, None) if layout.drawable else None,
        "raw_mode": not layout.drawable,
        "raw_text": "{}",
        "raw_errors": [],
        "max_payload_bytes": settings.BUS_MAX_PAYLOAD_BYTES,
    }


def _page(
    request: HttpRequest,
    event_type: EventType,
    *,
    text: str,
    problems: list[FieldError] | None = None,
    status: int = 200,
) -> HttpResponse:
    """The new-version page: the editor, and once checked, the verdict, diff, preview and dry run."""
    versions = versions_of(event_type)
    context: dict[str, Any] = {
        "topic": event_type.topic,
        "event_type": event_type,
        "text": text,
        "versions": versions,
        "problems": problems or [],
        "reason": request.POST.get("reason", ""),
        "declare_break": request.POST.get("declare_break") == "yes",
        "waiting": event_type.version_requests.filter(status="awaiting_approval").first(),
    }
    if request.method == "POST":
        schema, unreadable = json_parse(text, path="/schema")
        if unreadable:
            context["not_json"] = f"{unreadable[0]['path']}: {unreadable[0]['message']}"
        else:
            against = request.POST.get("against", "")
            check = version_draft_check(
                event_type=event_type, schema=schema, against=int(against) if against.isdigit() else None
            )
            context["check"] = check
            if not check.invalid:
                context["preview"] = _preview(check, schema, text)
    return render(request, "topics/version_new.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def version_new(request: HttpRequest, name: str, type_name: str) -> HttpResponse:
    """GET: the editor with the version in force. POST ``check``: the verdict. POST ``save``: propose it."""
    event_type = _type_for_author(request, name, type_name)
    if request.method == "GET":
        return _page(request, event_type, text=_starting_text(event_type))
    text = request.POST.get("schema", "")
    if request.POST.get("action") != "save":
        return _page(request, event_type, text=text)
    schema, unreadable = json_parse(text, path="/schema")
    if unreadable:
        return _page(request, event_type, text=text, status=400)
    try:
        saved = schema_version_propose(
            event_type=event_type,
            schema=schema,
            source=text,
            reason=request.POST.get("reason", ""),
            declare_break=request.POST.get("declare_break") == "yes",
            actor=signed_in_user(request),
        )
    except SchemaInvalidError as error:
        return _page(request, event_type, text=text, problems=[{"path": "/schema", "message": str(error)}], status=400)
    except BusInputError as refused:
        return _page(request, event_type, text=text, problems=refused.errors, status=400)
    if isinstance(saved, SchemaVersionRequest):
        messages.success(request, f"Breaking version proposed: a second bus admin approves or rejects it ({saved}).")
        return redirect("version-request", event_type.topic.name, event_type.name, saved.pk)
    messages.success(request, f"{event_type.name} v{saved.version} saved: publishers use it from now on.")
    return redirect("topic-detail", event_type.topic.name)


@login_required
@require_POST
def version_state(request: HttpRequest, name: str, type_name: str) -> HttpResponse:
    """A bus admin enables, deprecates or disables one version, with a reason."""
    event_type = get_object_or_404(EventType.objects.select_related("topic"), topic__name=name, name=type_name)
    number = request.POST.get("version", "")
    version = get_object_or_404(SchemaVersion, event_type=event_type, version=int(number) if number.isdigit() else 0)
    try:
        changed = schema_version_state_set(
            version=version,
            state=request.POST.get("state", ""),
            reason=request.POST.get("reason", ""),
            actor=signed_in_user(request),
        )
    except RightRefusedError as refused:
        target = f"schema:{event_type}/v{version.version}"
        refuse_audited(request, AuditAction.SCHEMA_VERSION_STATE_REFUSED, target, refused.errors[0]["message"])
    except BusInputError as refused:
        messages.error(request, f"v{version.version}: " + "; ".join(error["message"] for error in refused.errors))
        return redirect(_versions_url(event_type))
    messages.success(request, f"{event_type.name} v{changed.version} is {changed.get_state_display()} now.")
    return redirect(_versions_url(event_type))


def _versions_url(event_type: EventType) -> str:
    """The topic page at the type's versions."""
    return f"{reverse('topic-detail', args=[event_type.topic.name])}#versions-{event_type.name}"


def _request_for(name: str, type_name: str, pk: int) -> SchemaVersionRequest:
    """The request, 404 unless it belongs to that topic's type."""
    return get_object_or_404(
        SchemaVersionRequest.objects.select_related("event_type__topic", "requested_by", "decided_by", "version"),
        pk=pk,
        event_type__topic__name=name,
        event_type__name=type_name,
    )


@login_required
@require_http_methods(["GET"])
def version_request(request: HttpRequest, name: str, type_name: str, pk: int) -> HttpResponse:
    """A proposed breaking version: its findings, its diff against the version in force, and the decision."""
    event_type = _type_for_author(request, name, type_name)
    proposed = _request_for(name, type_name, pk)
    check = version_draft_check(event_type=event_type, schema=proposed.schema) if proposed.is_open else None
    context = {
        "topic": event_type.topic,
        "event_type": event_type,
        "proposed": proposed,
        "check": check,
        "own": proposed.requested_by_id == signed_in_user(request).pk,
    }
    return render(request, "topics/version_request.html", context)


@login_required
@require_POST
def version_request_decide(request: HttpRequest, name: str, type_name: str, pk: int) -> HttpResponse:
    """A second bus admin approves (the version is saved) or rejects a proposed breaking version."""
    event_type = _type_for_author(request, name, type_name)
    proposed = _request_for(name, type_name, pk)
    try:
        decided = schema_version_request_decide(
            request_id=proposed.pk,
            approve=request.POST.get("decision") == "approve",
            reason=request.POST.get("reason", ""),
            actor=signed_in_user(request),
        )
    except (BusInputError, SchemaInvalidError) as refused:
        text = str(refused) if isinstance(refused, SchemaInvalidError) else refused.errors[0]["message"]
        messages.error(request, text)
        return redirect("version-request", name, type_name, pk)
    if decided.version is not None:
        messages.success(request, f"Approved: {event_type.name} v{decided.version.version} is saved and in force.")
    else:
        messages.success(request, "Rejected: nothing was saved.")
    return redirect("topic-detail", event_type.topic.name)


@login_required
@require_POST
def version_request_cancel(request: HttpRequest, name: str, type_name: str, pk: int) -> HttpResponse:
    """The requester withdraws a breaking version nobody has decided yet."""
    _type_for_author(request, name, type_name)
    proposed = _request_for(name, type_name, pk)
    try:
        schema_version_request_cancel(request_id=proposed.pk, actor=signed_in_user(request))
    except BusInputError as refused:
        messages.error(request, refused.errors[0]["message"])
        return redirect("version-request", name, type_name, pk)
    messages.success(request, "Withdrawn: nothing was saved.")
    return redirect("topic-detail", name)
