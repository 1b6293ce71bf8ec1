"""Publishing through the generated form: the form, its preview, the confirm (once), the result."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import IntegrityError
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from busapp.actions.publishing import event_publish
from busapp.actions.requests import publish_request_create
from busapp.errors import ApprovalRequiredError, BusInputError, FieldError, PreviewInvalidError
from busapp.models import Event, PublishRequest, SchemaVersion, Source, Topic
from busapp.permissions import PUBLISH_TOPIC, VIEW_TOPIC
from busapp.previews import Preview, preview_read, preview_sign
from busapp.publishing import subscribers_count
from busapp.schema_forms import FormLayout, form_bind, form_layout, form_values, submitted_payload
from busapp.selectors import (
    event_types_with_active_versions,
    schema_version_active,
)
from busapp.validation import effective_at_error, payload_errors
from busapp.views.access import signed_in_user, topic_with_right

# The path errors about the "takes effect at" input carry (it is not part of the payload).
EFFECTIVE_AT = "/effective_at"


@login_required
@require_http_methods(["GET", "POST"])
def topic_publish(request: HttpRequest, name: str) -> HttpResponse:
    """The publish form generated from the event type's schema; a valid submission shows the preview."""
    topic = topic_with_right(request, name, PUBLISH_TOPIC)
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
            preview = preview_read(data.get("token", ""), user_id=signed_in_user(request).pk, topic=name)
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
        user_id=signed_in_user(request).pk, topic=name, event_type=type_name, payload=payload, effective_at=effective_at
    )
    return render(request, "publish/preview.html", page.preview_context(preview, token))


def payload_inputs(
    request: HttpRequest,
    layout: FormLayout,
    *,
    raw_mode: bool,
    payload: dict[str, Any] | None = None,
    errors: list[FieldError] | None = None,
) -> dict[str, Any]:
    """What ``publish/_payload_inputs.html`` needs: the generated inputs or the raw JSON box, filled and with errors.

    Filled from ``payload`` when given (a preview to change, a dead letter to fix), else from
    what was posted, else with the schema's defaults.
    """
    errors = errors or []
    submitted = request.method == "POST" and payload is None
    values: dict[str, str] | QueryDict | None = request.POST if submitted else None
    if payload is not None:
        values = form_values(layout, payload)
    raw_text = request.POST.get("payload_json", "") if submitted else ""
    if payload is not None or not raw_text:
        raw_text = json.dumps(payload if payload is not None else {}, indent=2, ensure_ascii=False)
    return {
        "layout": layout,
        "form": form_bind(layout, values, errors) if layout.drawable else None,
        "raw_mode": raw_mode,
        "raw_text": raw_text,
        "raw_errors": [f"{e['path']}: {e['message']}" for e in errors] if raw_mode else [],
        "max_payload_bytes": settings.BUS_MAX_PAYLOAD_BYTES,
    }


class _PublishPage:
    """The publish form of one topic and event type, in form or raw JSON mode, as submitted or fresh."""

    def __init__(self, request: HttpRequest, topic: Topic, types: list[Any], version: SchemaVersion) -> None:
        self.request, self.topic, self.types, self.version = request, topic, types, version
        self.layout: FormLayout = form_layout(version)
        data = request.POST if request.method == "POST" else request.GET
        self.raw_mode = data.get("mode") == "raw" or not self.layout.drawable

    def read_payload(self) -> tuple[Any, list[FieldError]]:
        """The payload the person submitted, and what could not be read (a wrong type, broken JSON)."""
        reading = submitted_payload(self.layout, self.request.POST, raw_mode=self.raw_mode)
        return reading.payload, reading.errors

    def read_effective_at(self) -> tuple[dt.datetime | None, list[FieldError]]:
        """The optional "takes effect at" time (UTC): empty for at once, else a moment in the future."""
        text = self.request.POST.get("effective_at", "").strip()
        if not text:
            return None, []
        try:
            moment = dt.datetime.fromisoformat(text.removesuffix("UTC").strip())
        except ValueError:
            message = "must be a date and time in UTC, like 2027-01-31 09:00"
            return None, [{"path": EFFECTIVE_AT, "message": message}]
        moment = moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment
        too_late = effective_at_error(moment)
        return (None, [too_late]) if too_late else (moment, [])

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
        time_errors = [error["message"] for error in errors or [] if error["path"] == EFFECTIVE_AT]
        errors = [error for error in errors or [] if error["path"] != EFFECTIVE_AT]
        effective_text = self.request.POST.get("effective_at", "") if submitted else ""
        if effective_at is not None:
            effective_text = effective_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M")
        context = {
            "topic": self.topic,
            "types": self.types,
            "version": self.version,
            **payload_inputs(self.request, self.layout, raw_mode=self.raw_mode, payload=payload, errors=errors),
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
            "publisher": signed_in_user(self.request).get_username(),
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
    topic = topic_with_right(request, name, PUBLISH_TOPIC)
    try:
        preview = preview_read(request.POST.get("token", ""), user_id=signed_in_user(request).pk, topic=name)
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
                actor=signed_in_user(request),
                envelope_id=preview.envelope_id,
                effective_at=preview.effective_at,
            )
            messages.success(request, _waiting_message(waiting))
            return redirect(waiting)
        event_publish(
            topic=name,
            event_type=preview.event_type,
            payload=preview.payload,
            actor=signed_in_user(request),
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
def publish_result(request: HttpRequest, name: str, envelope_id: uuid.UUID) -> HttpResponse:
    """What became of a publish: the event id, published or pending (and why), a link to its record."""
    topic = topic_with_right(request, name, VIEW_TOPIC)
    event = get_object_or_404(Event, envelope_id=str(envelope_id), topic=topic)
    return render(request, "publish/result.html", {"topic": topic, "event": event})
