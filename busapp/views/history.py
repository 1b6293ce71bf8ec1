"""The event history: filtered keyset pages, one event's full record, exports, and saved filters."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.handlers.asgi import ASGIRequest
from django.db.models import QuerySet
from django.forms import Form
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from busapp.actions import filters
from busapp.actions.exports import events_export_start
from busapp.cloudevents import base_url_of
from busapp.errors import ActionRefusedError, HistoryQueryError
from busapp.forms import EventFilterForm
from busapp.history import CLOUDEVENTS_NDJSON, HistoryPage, history_count, history_page_at
from busapp.models import AuditAction, Event, SavedFilter, SavedFilterPage, Topic
from busapp.permissions import EXPORT_TOPIC, VIEW_TOPIC, topics_with_right
from busapp.selectors import event_audit_entries, event_provenance
from busapp.views.access import refuse_audited, signed_in_user, topic_with_right
from busapp.views.applied import services_context

EXPORT_FORMATS = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson; charset=utf-8"}
# The history has one more: CloudEvents 1.0 structured events, one a line (the audit log has no events to write).
EVENT_EXPORT_FORMATS = {**EXPORT_FORMATS, CLOUDEVENTS_NDJSON: "application/x-ndjson; charset=utf-8"}


def topics_for(user: User, right: str) -> QuerySet[Topic] | None:
    """The topics a right reaches: None when the role holds it on every topic (no filter needed)."""
    if user.is_active and user.has_perm(f"busapp.{right}"):
        return None
    return topics_with_right(user, right)


def _topic_names(topics: QuerySet[Topic] | None) -> list[str]:
    """The names the topic filter offers: these topics, or every topic (None)."""
    return list((topics if topics is not None else Topic.objects.all()).values_list("name", flat=True))


def export_allowed(user: User) -> bool:
    """True when the person may export some topic's history."""
    exportable = topics_for(user, EXPORT_TOPIC)
    return exportable is None or exportable.exists()


def active_filter_count(request: HttpRequest) -> int:
    """How many filters the URL sets (the folded filter box says it): non-empty values, the cursor aside."""
    return sum(1 for name in request.GET if name != "cursor" and any(v.strip() for v in request.GET.getlist(name)))


def filter_query(request: HttpRequest) -> str:
    """The query string without the page cursor: what a saved filter, an export or a first page keeps."""
    query = request.GET.copy()
    query.pop("cursor", None)
    return str(query.urlencode())


@login_required
@require_GET
def event_list(request: HttpRequest) -> HttpResponse:
    """The history, newest first, narrowed by the URL's filters, a page at a time."""
    user = signed_in_user(request)
    topics = topics_for(user, VIEW_TOPIC)
    form = EventFilterForm(request.GET, topic_names=_topic_names(topics))

    def page_at(cursor: str | None) -> HistoryPage:
        return history_page_at(form.history_filter(), topics=topics, cursor=cursor)

    context, status = filtered_list(request, user, form, page_at, SavedFilterPage.EVENTS)
    context.update(can_export=export_allowed(user), payload_fields=form.payload_fields().listed())
    if status == 200 and not form.cleaned_data["changed"]:  # changes are found a stretch at a time, not counted
        context["count"] = history_count(form.history_filter(), topics=topics)
    return render(request, "events/list.html", context, status=status)


def filtered_list(
    request: HttpRequest, user: User, form: Form, page_at: Callable[[str | None], object], saved: SavedFilterPage
) -> tuple[dict[str, object], int]:
    """A filtered list page's context and status: the page at the URL's cursor, or the form's errors and a 400."""
    page, status = None, 400
    if form.is_valid():
        try:
            page, status = page_at(request.GET.get("cursor") or None), 200
        except HistoryQueryError as error:
            form.add_error(None, [item["message"] for item in error.errors])
    context = {
        "form": form,
        "page": page,
        "filter_query": filter_query(request),
        "active_filters": active_filter_count(request),
        "saved_filters": SavedFilter.objects.filter(owner=user, page=saved),
    }
    return context, status


@login_required
@require_GET
def event_detail(request: HttpRequest, envelope_id: str) -> HttpResponse:
    """One event's full record: envelope, schema, validation, publisher, approval, delivery, provenance, audit."""
    event = get_object_or_404(
        Event.objects.select_related("topic", "event_type", "schema_version", "schema_version__event_type"),
        envelope_id=envelope_id,
    )
    topic_with_right(request, event.topic.name, VIEW_TOPIC)
    provenance = event_provenance(event)
    context = {
        "event": event,
        "envelope_json": json.dumps(json.loads(event.envelope), indent=2, ensure_ascii=False),
        "schema_json": json.dumps(event.schema_version.authored, indent=2, ensure_ascii=False),
        "provenance": provenance,
        "audit_entries": event_audit_entries(event, provenance),
        **services_context(event),
    }
    return render(request, "events/detail.html", context)


@login_required
@require_GET
def event_export(request: HttpRequest, fmt: str) -> HttpResponseBase:
    """The filtered history as CSV, NDJSON or CloudEvents NDJSON, streamed; for holders of the export right, audited."""
    user = signed_in_user(request)
    if fmt not in EVENT_EXPORT_FORMATS:
        message = f"unknown export format {fmt!r}: use {', '.join(EVENT_EXPORT_FORMATS)}"
        return HttpResponse(message, status=404, content_type="text/plain")
    exportable = topics_for(user, EXPORT_TOPIC)
    if exportable is not None and not exportable.exists():
        message = "exporting history needs the export right (auditors and bus admins hold it)"
        refuse_audited(request, AuditAction.EVENTS_EXPORT_REFUSED, "events", message, missing_right=EXPORT_TOPIC)
    form = EventFilterForm(request.GET, topic_names=_topic_names(topics_for(user, VIEW_TOPIC)))
    if not form.is_valid():
        message = f"the export's filter is not valid: {form_problems(form)}"
        return HttpResponse(message, status=400, content_type="text/plain")
    if form.cleaned_data["changed"]:  # read a stretch at a time, for pages; an export would read the whole type
        message = "an export takes every event of the filter: leave out 'only where this field changed'"
        return HttpResponse(message, status=400, content_type="text/plain")
    export = events_export_start(
        actor=user,
        fmt=fmt,
        history_filter=form.history_filter(),
        topics=exportable,
        base_url=base_url_of(request),
    )
    return export_response(request, export.lines, fmt=fmt, rows=export.rows, name="events")


def export_response(request: HttpRequest, lines: Iterator[str], *, fmt: str, rows: int, name: str) -> HttpResponseBase:
    """The export as a streamed download named ``hms-<name>-<time>.<fmt>``, its row count in a header."""
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response = StreamingHttpResponse(streamed(request, lines), content_type=EVENT_EXPORT_FORMATS[fmt])
    response["Content-Disposition"] = f'attachment; filename="hms-{name}-{stamp}.{fmt}"'
    response["X-Export-Rows"] = str(rows)
    return response


def streamed(request: HttpRequest, lines: Iterator[str]) -> Iterator[str] | AsyncIterator[str]:
    """The chunks as the server streams them: an async iterator under ASGI, so they are not gathered in memory.

    Django serves a plain iterator under ASGI by collecting it into a list first; each chunk
    is read in the thread that owns the database connection instead.
    """
    if not isinstance(request, ASGIRequest):
        return lines

    async def chunks() -> AsyncIterator[str]:
        read = sync_to_async(_next_chunk, thread_sensitive=True)
        try:
            while (chunk := await read(lines)) is not None:
                yield chunk
        finally:
            await sync_to_async(lines.close, thread_sensitive=True)()  # type: ignore[attr-defined]

    return chunks()


def _next_chunk(lines: Iterator[str]) -> str | None:
    """The next chunk of an export, or None at its end."""
    return next(lines, None)


def form_problems(form: Form) -> str:
    """A filter form's errors as one line of text, each naming its field."""
    return "; ".join(
        f"{name or 'filter'}: {' '.join(str(error) for error in errors)}" for name, errors in form.errors.items()
    )


@login_required
@require_POST
def saved_filter_create(request: HttpRequest) -> HttpResponse:
    """Keep the current filter of the history or the audit log under a name of the person's choosing."""
    page, query = request.POST.get("page", ""), request.POST.get("query", "")
    try:
        saved = filters.saved_filter_create(
            owner=signed_in_user(request), page=page, name=request.POST.get("name", ""), query=query
        )
    except ActionRefusedError as refused:
        [error] = refused.errors
        if error["path"] == "page":
            return HttpResponse(error["message"], status=400, content_type="text/plain")
        messages.error(request, error["message"])
        return redirect(SavedFilter(page=page, query=filters.saved_filter_query(query)).get_absolute_url())
    messages.success(request, f"Saved the filter “{saved.name}”.")
    return redirect(saved.get_absolute_url())


@login_required
@require_POST
def saved_filter_delete(request: HttpRequest, pk: int) -> HttpResponse:
    """Forget one of the person's saved filters."""
    try:
        saved = filters.saved_filter_delete(owner=signed_in_user(request), filter_id=pk)
    except SavedFilter.DoesNotExist:
        raise Http404("no such filter of yours") from None
    messages.success(request, f"Deleted the filter “{saved.name}”.")
    return redirect("event-list" if saved.page == SavedFilterPage.EVENTS else "audit-log")
