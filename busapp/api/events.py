"""The history over the API: the filtered, keyset-paged list of /events/, one event's record, a type's event in force.

A service starting up reads the event in force here; it catches up on the rest with GET on a topic's events/.
"""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.http import QueryDict
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, status
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from busapp.api.authentication import topic_for, topics_viewable
from busapp.api.errors import ApiError, detail_errors, refusals
from busapp.api.selectors import event_record, event_type_on
from busapp.api.serializers import (
    CloudEventSerializer,
    EventDetailSerializer,
    EventInForceSerializer,
    EventPageSerializer,
    PageQuerySerializer,
)
from busapp.api.views import JSONRefusalsMixin
from busapp.cloudevents import MEDIA_TYPE as CLOUDEVENTS_MEDIA_TYPE
from busapp.cloudevents import base_url_of, cloudevent_of
from busapp.errors import FieldError
from busapp.forms import EventFilterForm
from busapp.history import history_page_at
from busapp.permissions import VIEW_TOPIC
from busapp.selectors import event_in_force

# Query parameters that may be repeated; their values are joined as the page's text box joins lines.
REPEATED = ("where",)


def filter_parameters(form_class: type[forms.Form]) -> list[OpenApiParameter]:
    """The query parameters a filter form reads, described from its fields (so the document cannot drift from it)."""
    parameters = []
    for name, field in form_class.base_fields.items():
        schema: dict[str, Any] = {"type": "string"}
        if isinstance(field, forms.DateTimeField):
            schema["format"] = "date-time"
        choices = cast("list[tuple[str, str]]", getattr(field, "choices", []))
        if any(value for value, _ in choices):
            schema["enum"] = [value for value, _ in choices if value]
        if isinstance(field, forms.CharField) and field.max_length:
            schema["maxLength"] = field.max_length
        many = name in REPEATED
        description = str(field.help_text) or f"Only events with this {str(field.label or name).lower()}."
        parameters.append(
            OpenApiParameter(
                name,
                {"type": "array", "items": schema} if many else schema,
                OpenApiParameter.QUERY,
                description=f"Repeat for more (all must hold). {description}" if many else description,
                explode=True if many else None,
            )
        )
    return parameters


def filter_data(query: QueryDict) -> QueryDict:
    """The query string as the filter form reads it: repeated ``where`` parameters become one condition a line."""
    data = query.copy()
    for name in REPEATED:
        data.setlist(name, ["\n".join(data.getlist(name))])
    return data


def form_errors(form: forms.Form) -> list[FieldError]:
    """A filter form's errors as paths into the query string and messages."""
    return [
        {"path": "/query" if name == "__all__" else f"/query/{name}", "message": str(message)}
        for name, messages in form.errors.items()
        for message in messages
    ]


class EventListView(APIView):
    """GET /api/events/: the history the caller may see, newest first, narrowed as on the page /events/."""

    @extend_schema(
        operation_id="event_list",
        parameters=[*filter_parameters(EventFilterForm), PageQuerySerializer],
        responses={200: EventPageSerializer, **refusals(400, 401, 403)},
    )
    def get(self, request: Request) -> Response:
        """A page of the filtered history; a wrong filter, condition or cursor is 400 naming it and the rule."""
        topics = topics_viewable(request)
        form = EventFilterForm(
            filter_data(request.query_params), topic_names=list(topics.values_list("name", flat=True))
        )
        paging = PageQuerySerializer(data=request.query_params)
        errors = [] if form.is_valid() else form_errors(form)
        errors += [] if paging.is_valid() else detail_errors(paging.errors, "/query")
        if errors:
            raise ApiError(errors, status.HTTP_400_BAD_REQUEST)
        cursor, size = paging.validated_data.get("cursor"), paging.validated_data["limit"]
        page = history_page_at(form.history_filter(), topics=topics, cursor=cursor, size=size)
        body = {"events": page.events, "next": page.older, "searched_to": page.searched_to}
        return Response(EventPageSerializer(body).data)


class CloudEventRenderer(JSONRenderer):
    """JSON as ``application/cloudevents+json``: chosen only when the caller's Accept names it."""

    media_type = CLOUDEVENTS_MEDIA_TYPE
    format = "cloudevents"


class EventDetailView(JSONRefusalsMixin, APIView):
    """GET /api/events/<envelope_id>/: one event's record, or the event as a CloudEvents 1.0 structured event."""

    # JSON first: it stays the answer to callers that send no Accept, or */*; refusals are JSON whatever was asked.
    renderer_classes = [JSONRenderer, CloudEventRenderer]

    @extend_schema(
        operation_id="event_detail",
        responses={
            (200, "application/json"): EventDetailSerializer,
            (200, CLOUDEVENTS_MEDIA_TYPE): CloudEventSerializer,
            **{(code, "application/json"): answer for code, answer in refusals(401, 403, 404).items()},
        },
    )
    def get(self, request: Request, envelope_id: str) -> Response:
        """The event, if it is on a topic the caller may see: an unknown id and a hidden one are both 404."""
        event = event_record(envelope_id=envelope_id, topics=topics_viewable(request))
        if event is None:
            raise exceptions.NotFound(f"no event {envelope_id!r} in the history you may see")
        if request.accepted_renderer.media_type == CLOUDEVENTS_MEDIA_TYPE:
            return Response(cloudevent_of(event, base_url=base_url_of(request)))
        return Response(EventDetailSerializer(event).data)


class EventInForceView(APIView):
    """GET /api/topics/<name>/types/<event_type>/latest/: the type's newest published event, read at start-up."""

    @extend_schema(operation_id="event_in_force", responses={200: EventInForceSerializer, **refusals(401, 403, 404)})
    def get(self, request: Request, name: str, event_type: str) -> Response:
        """The event in force with its envelope as sent; pending events are not on the bus yet, so never in force."""
        topic = topic_for(request, name, VIEW_TOPIC)
        found = event_type_on(topic, event_type)
        event = event_in_force(event_type=found)
        if event is None:
            message = f"no event of {found.name} has been published yet"
            raise ApiError([{"path": "/type", "message": message}], status.HTTP_404_NOT_FOUND)
        return Response(EventInForceSerializer(event).data)
