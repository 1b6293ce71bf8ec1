"""Pages and the health check; thin: check the right, call one service or selector, render."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from busapp.audit import audit_record
from busapp.models import Event, PublishRequest, PublishRequestStatus, SchemaVersion, Source, Topic
from busapp.permissions import APPROVE_TOPIC, PUBLISH_TOPIC, VIEW_TOPIC, topic_right_held
from busapp.previews import Preview, PreviewInvalidError, preview_read, preview_sign
from busapp.publishing import bus_reachable, subscribers_count
from busapp.schema_forms import FormLayout, form_bind, form_layout, form_values, payload_from_form
from busapp.selectors import (
    dead_letters_open_count,
    event_types_with_active_versions,
    pending_event_count,
    publish_requests_for_approver,
    publish_requests_open,
    recent_events,
    schema_version_active,
    topic_summaries,
    topics_visible_to,
)
from busapp.services import event_publish, publish_request_cancel, publish_request_create, publish_request_decide
from busapp.validation import ApprovalRequiredError, BusInputError, FieldError, payload_errors

# The raw JSON box refuses text far past the payload limit before parsing it.
RAW_JSON_MAX_CHARS = 4 * 64 * 1024
# The path errors about the "takes effect at" input carry (it is not part of the payload).
EFFECTIVE_AT = "/effective_at"


def _user(request: HttpRequest) -> User:
    """The signed-in person (every page but the health check requires one)."""
    assert isinstance(request.user, User)  # noqa: S101 (login_required guarantees it)
    return request.user


def _topic_with_right(request: HttpRequest, name: str, right: str) -> Topic:
    """The topic, if the person holds ``right`` on it; otherwise 403, and a refused publish is audited."""
    topic = get_object_or_404(Topic, name=name)
    user = _user(request)
    if topic_right_held(user, right, topic):
        return topic
    if right in (PUBLISH_TOPIC, APPROVE_TOPIC):
        with transaction.atomic():
            audit_record(
                actor=user,
                action="publish.refused" if right == PUBLISH_TOPIC else "approval.refused",
                target=f"topic:{name}",
                details={"method": request.method, "path": request.path, "missing_right": right},
            )
    raise PermissionDenied(f"you do not hold {right} on topic {name}")


@login_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    """The topics this person may see with their recent activity, events still pending, open dead letters."""
    user = _user(request)
    topics = topics_visible_to(user)
    summaries = topic_summaries(user, topics)
    context = {
        "summaries": summaries,
        "pending_events": pending_event_count(),
        "open_dead_letters": sum(summary.open_dead_letters for summary in summaries),
        "to_approve": publish_requests_for_approver(user),
        "waiting": publish_requests_open(topics),
    }
    return render(request, "dashboard.html", context)


@login_required
@require_GET
def topic_list(request: HttpRequest) -> HttpResponse:
    """Every topic this person may see."""
    user = _user(request)
    return render(request, "topics/list.html", {"summaries": topic_summaries(user, topics_visible_to(user))})


@login_required
@require_GET
def topic_detail(request: HttpRequest, name: str) -> HttpResponse:
    """One topic: its event types with their active schema, readable, and its newest events."""
    topic = _topic_with_right(request, name, VIEW_TOPIC)
    types = [
        {"event_type": event_type, "version": version, "layout": form_layout(version) if version else None}
        for event_type, version in event_types_with_active_versions(topic=topic)
    ]
    context = {
        "topic": topic,
        "types": types,
        "events": recent_events(topic=topic),
        "can_publish": topic_right_held(_user(request), PUBLISH_TOPIC, topic),
        "open_dead_letters": dead_letters_open_count([topic]),
    }
    return render(request, "topics/detail.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def topic_publish(request: HttpRequest, name: str) -> HttpResponse:
    """The publish form generated from the event type's schema; a valid submission shows the preview."""
    topic = _topic_with_right(request, name, PUBLISH_TOPIC)
    types = [(event_type, version) for event_type, version in event_types_with_active_versions(topic=topic) if version]
    if not types:
        return render(request, "publish/unavailable.html", {"topic": topic}, status=409)
    data = request.POST if request.method == "POST" else request.GET
    type_name = data.get("type") or types[0][0].name
    try:
        version = schema_version_active(topic=name, event_type=type_name)
    except BusInputError as refused:
        form = _PublishPage(request, topic, types, types[0][1])
        return form.render(errors=refused.errors, status=400)
    page = _PublishPage(request, topic, types, version)
    if request.method == "GET":
        return page.render()
    if data.get("action") == "edit":  # back from the preview, with what was previewed
        try:
            preview = preview_read(data.get("token", ""), user_id=_user(request).pk, topic=name)
        except PreviewInvalidError as error:
            return page.render(errors=[{"path": "", "message": str(error)}], status=400)
        return page.render(payload=preview.payload, effective_at=preview.effective_at)
    payload, errors = page.read_payload()
    if not errors:
        errors = payload_errors(version, payload)
    effective_at, time_errors = page.read_effective_at()
    if errors or time_errors:
        return page.render(errors=errors + time_errors, status=400)
    token, preview = preview_sign(
        user_id=_user(request).pk, topic=name, event_type=type_name, payload=payload, effective_at=effective_at
    )
    return render(request, "publish/preview.html", page.preview_context(preview, token))


class _PublishPage:
    """The publish form of one topic and event type, in form or raw JSON mode, as submitted or fresh."""

    def __init__(self, request: HttpRequest, topic: Topic, types: list[Any], version: SchemaVersion) -> None:
        self.request, self.topic, self.types, self.version = request, topic, types, version
        self.layout: FormLayout = form_layout(version)
        data = request.POST if request.method == "POST" else request.GET
        self.raw_mode = data.get("mode") == "raw" or not self.layout.drawable

    def read_payload(self) -> tuple[Any, list[FieldError]]:
        """The payload the person submitted, and what could not be read (a wrong type, broken JSON)."""
        if not self.raw_mode:
            reading = payload_from_form(self.layout, self.request.POST)
            return reading.payload, reading.errors
        text = self.request.POST.get("payload_json", "")
        if len(text) > RAW_JSON_MAX_CHARS:
            return None, [{"path": "/payload", "message": f"is {len(text):,} characters; far over the 64 KiB limit"}]
        try:
            payload = json.loads(text)
        except ValueError as error:
            return None, [{"path": "/payload", "message": f"is not valid JSON: {error}"}]
        if not isinstance(payload, dict):
            return None, [{"path": "/payload", "message": "must be a JSON object: {...}"}]
        return payload, []

    def read_effective_at(self) -> tuple[dt.datetime | None, list[FieldError]]:
        """The optional "takes effect at" time (UTC): empty for at once, else a moment in the future."""
        text = self.request.POST.get("effective_at", "").strip()
        if not text:
            return None, []
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            return None, [{"path": EFFECTIVE_AT, "message": f"{text!r} is not a date and time"}]
        moment = moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment
        if moment <= timezone.now():
            return None, [{"path": EFFECTIVE_AT, "message": "is in the past: leave it empty to publish at once"}]
        return moment, []

    def render(
        self,
        *,
        errors: list[FieldError] | None = None,
        payload: dict[str, Any] | None = None,
        effective_at: dt.datetime | None = None,
        status: int = 200,
    ) -> HttpResponse:
        """The form: fresh (schema defaults), as submitted (values kept, errors by their fields), or a payload."""
        submitted = self.request.method == "POST" and payload is None
        values: dict[str, str] | QueryDict | None = self.request.POST if submitted else None
        if payload is not None:
            values = form_values(self.layout, payload)
        raw_text = self.request.POST.get("payload_json", "") if submitted else ""
        if payload is not None or not raw_text:
            raw_text = json.dumps(payload if payload is not None else {}, indent=2, ensure_ascii=False)
        time_errors = [error["message"] for error in errors or [] if error["path"] == EFFECTIVE_AT]
        errors = [error for error in errors or [] if error["path"] != EFFECTIVE_AT]
        effective_text = self.request.POST.get("effective_at", "") if submitted else ""
        if effective_at is not None:
            effective_text = effective_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M")
        context = {
            "topic": self.topic,
            "types": self.types,
            "version": self.version,
            "layout": self.layout,
            "form": form_bind(self.layout, values, errors) if self.layout.drawable else None,
            "raw_mode": self.raw_mode,
            "raw_text": raw_text,
            "raw_errors": [f"{e['path']}: {e['message']}" for e in errors] if self.raw_mode else [],
            "max_payload_bytes": settings.BUS_MAX_PAYLOAD_BYTES,
            "effective_text": effective_text,
            "time_errors": time_errors,
        }
        return render(self.request, "publish/form.html", context, status=status)

    def preview_context(self, preview: Preview, token: str) -> dict[str, Any]:
        """What the preview page shows: the envelope as it will go out, and who is listening."""
        envelope = {
            "id": str(preview.envelope_id),
            "type": preview.event_type,
            "timestamp": "(the moment you confirm)",
            "topic": self.topic.name,
            "schema_version": self.version.version,
            "source": Source.FORM.value,
            "publisher": _user(self.request).get_username(),
            "payload": preview.payload,
        }
        return {
            "topic": self.topic,
            "version": self.version,
            "envelope_json": json.dumps(envelope, indent=2, ensure_ascii=False),
            "subscribers": subscribers_count(self.topic.channel),
            "token": token,
            "preview": preview,
            "raw_mode": self.raw_mode,
            "waits": self.topic.sensitive or preview.effective_at is not None,
        }


@login_required
@require_POST
def topic_publish_confirm(request: HttpRequest, name: str) -> HttpResponse:
    """Publish what was previewed, once; on a sensitive topic, or with a time, keep it as a waiting request."""
    topic = _topic_with_right(request, name, PUBLISH_TOPIC)
    try:
        preview = preview_read(request.POST.get("token", ""), user_id=_user(request).pk, topic=name)
    except PreviewInvalidError as error:
        return render(request, "publish/refused.html", {"topic": topic, "message": str(error)}, status=400)
    already = _confirmed_before(topic, preview)
    if already is not None:
        messages.info(request, "This preview was already confirmed; nothing was published twice.")
        return already
    try:
        if topic.sensitive or preview.effective_at is not None:
            waiting = publish_request_create(
                topic=name,
                event_type=preview.event_type,
                payload=preview.payload,
                actor=_user(request),
                envelope_id=preview.envelope_id,
                effective_at=preview.effective_at,
            )
            messages.success(request, _waiting_message(waiting))
            return redirect(waiting)
        event_publish(
            topic=name,
            event_type=preview.event_type,
            payload=preview.payload,
            actor=_user(request),
            source=Source.FORM,
            envelope_id=preview.envelope_id,
        )
    except IntegrityError:  # the same preview confirmed twice at once: the other request did it
        messages.info(request, "This preview was already confirmed; nothing was published twice.")
        return _confirmed_before(topic, preview) or redirect("topic-detail", name=name)
    except (ApprovalRequiredError, BusInputError) as refused:
        context = {"topic": topic, "message": str(refused), "errors": refused.errors}
        return render(request, "publish/refused.html", context, status=400)
    return redirect("publish-result", name=name, envelope_id=preview.envelope_id)


def _confirmed_before(topic: Topic, preview: Preview) -> HttpResponse | None:
    """Where a preview that was already confirmed ended up: its event, or its waiting request."""
    if Event.objects.filter(envelope_id=str(preview.envelope_id)).exists():
        return redirect("publish-result", name=topic.name, envelope_id=preview.envelope_id)
    waiting = PublishRequest.objects.filter(envelope_id=str(preview.envelope_id)).first()
    return redirect(waiting) if waiting is not None else None


def _waiting_message(waiting: PublishRequest) -> str:
    """What the requester is told about a publish that waits."""
    when = f" It goes out at {waiting.effective_at:%Y-%m-%d %H:%M} UTC" if waiting.effective_at else ""
    if waiting.needs_approval:
        return f"Sent for approval: another publisher of {waiting.topic.name} must approve it.{when}"
    return f"Scheduled.{when}; you can cancel it until then."


@login_required
@require_GET
def publish_request_detail(request: HttpRequest, name: str, pk: int) -> HttpResponse:
    """A waiting publish: what it will send, who asked, and (for a second person) approve or reject."""
    topic = _topic_with_right(request, name, VIEW_TOPIC)
    waiting = get_object_or_404(
        PublishRequest.objects.select_related("event_type", "requested_by", "decided_by", "event"), pk=pk, topic=topic
    )
    return render(request, "publish/request.html", _request_context(request, topic, waiting))


def _request_context(request: HttpRequest, topic: Topic, waiting: PublishRequest) -> dict[str, Any]:
    """What the request page shows, and which buttons this person gets."""
    user = _user(request)
    approver = topic_right_held(user, APPROVE_TOPIC, topic)
    return {
        "topic": topic,
        "waiting": waiting,
        "payload_json": json.dumps(waiting.payload, indent=2, ensure_ascii=False),
        "own": waiting.requested_by_id == user.pk,
        "can_decide": approver
        and waiting.status == PublishRequestStatus.AWAITING_APPROVAL
        and waiting.requested_by_id != user.pk,
        "can_cancel": waiting.is_open and (waiting.requested_by_id == user.pk or approver),
    }


@login_required
@require_POST
def publish_request_decision(request: HttpRequest, name: str, pk: int) -> HttpResponse:
    """Approve or reject a waiting publish, with a reason; only a second person holding approve_topic."""
    topic = _topic_with_right(request, name, APPROVE_TOPIC)
    waiting = get_object_or_404(PublishRequest, pk=pk, topic=topic)
    decision = request.POST.get("decision")
    if decision not in ("approve", "reject"):
        return _request_refused(request, topic, waiting, "choose approve or reject")
    try:
        decided = publish_request_decide(
            request_id=waiting.pk,
            actor=_user(request),
            approve=decision == "approve",
            reason=request.POST.get("reason", ""),
        )
    except BusInputError as refused:
        return _request_refused(request, topic, waiting, "; ".join(error["message"] for error in refused.errors))
    messages.success(request, f"{decided.get_status_display().capitalize()}.")
    return redirect(decided)


@login_required
@require_POST
def publish_request_withdraw(request: HttpRequest, name: str, pk: int) -> HttpResponse:
    """Cancel a waiting publish: its requester, or anyone who may approve on the topic."""
    topic = _topic_with_right(request, name, VIEW_TOPIC)
    waiting = get_object_or_404(PublishRequest, pk=pk, topic=topic)
    if not _request_context(request, topic, waiting)["can_cancel"] and waiting.is_open:
        raise PermissionDenied("only its requester or an approver of the topic may cancel a waiting publish")
    try:
        publish_request_cancel(request_id=waiting.pk, actor=_user(request), reason=request.POST.get("reason", ""))
    except BusInputError as refused:
        return _request_refused(request, topic, waiting, "; ".join(error["message"] for error in refused.errors))
    messages.success(request, "Cancelled: it will not be published.")
    return redirect(waiting)


def _request_refused(request: HttpRequest, topic: Topic, waiting: PublishRequest, message: str) -> HttpResponse:
    """The request page again, with why the action was refused."""
    waiting.refresh_from_db()
    context = {**_request_context(request, topic, waiting), "refusal": message}
    return render(request, "publish/request.html", context, status=400)


@login_required
@require_GET
def publish_result(request: HttpRequest, name: str, envelope_id: uuid.UUID) -> HttpResponse:
    """What became of a publish: the event id, published or pending (and why), a link to its record."""
    topic = _topic_with_right(request, name, VIEW_TOPIC)
    event = get_object_or_404(Event, envelope_id=str(envelope_id), topic=topic)
    return render(request, "publish/result.html", {"topic": topic, "event": event})


@login_required
@require_GET
def event_detail(request: HttpRequest, envelope_id: str) -> HttpResponse:
    """One event's record: envelope, schema version, publisher, delivery."""
    event = get_object_or_404(
        Event.objects.select_related("topic", "event_type", "schema_version"), envelope_id=envelope_id
    )
    _topic_with_right(request, event.topic.name, VIEW_TOPIC)
    envelope = json.dumps(json.loads(event.envelope), indent=2, ensure_ascii=False)
    return render(request, "events/detail.html", {"event": event, "envelope_json": envelope})


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """For load balancers and operators: database and Redis reachability, events still pending."""
    database_ok = True
    try:
        connection.ensure_connection()
        pending = pending_event_count()
    except DatabaseError:
        database_ok, pending = False, -1
    redis_ok = bus_reachable()
    status = 200 if database_ok and redis_ok else 503
    return JsonResponse({"database": database_ok, "redis": redis_ok, "pending_events": pending}, status=status)
