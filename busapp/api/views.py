"""Thin API views: check the caller's right and the body, call one service or selector, answer in JSON."""

from __future__ import annotations

import datetime as dt
import functools
import json
import threading
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework import status
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer
from rest_framework.views import APIView

from busapp.actions.publishing import BatchOutcome, event_publish, event_publish_batch
from busapp.actions.registry import topic_create_with_type
from busapp.api.authentication import (
    caller,
    caller_actor,
    caller_name,
    person_with_permission,
    topic_for,
    topics_for,
)
from busapp.api.errors import ApiError, body_too_large, detail_errors, refusals
from busapp.api.idempotency import Answer, publish_once, request_sha256
from busapp.api.parsers import StrictJSONParser
from busapp.api.selectors import catch_up_page, topic_names_publishable, topics_with_schemas
from busapp.api.serializers import (
    BatchInSerializer,
    BatchResultSerializer,
    CatchUpPageSerializer,
    CatchUpQuerySerializer,
    EventInSerializer,
    PublishedSerializer,
    TopicInSerializer,
    TopicListSerializer,
    TopicSerializer,
)
from busapp.errors import BusInputError, FieldError
from busapp.models import AuditAction, Event, EventStatus, SchemaVersion, SchemaVersionState, Source, Topic
from busapp.permissions import PUBLISH_TOPIC, VIEW_TOPIC

IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="Send the same request again with the same key (within 24 hours): you get the first answer, "
    "and nothing is published twice. The same key with another body is refused with 409.",
)


def body_checked(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 when it is over ``limit`` bytes (before anything parses it)."""
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit, int(declared))
    body: bytes = request.body
    if len(body) > limit:
        raise body_too_large(limit, len(body))
    return body


def input_valid(serializer_class: type[Serializer[Any]], request: Request) -> dict[str, Any]:
    """The parsed, checked body: 415 when not JSON, 400 when malformed or missing a member."""
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    data: dict[str, Any] = serializer.validated_data
    return data


def query_valid(serializer_class: type[Serializer[Any]], request: Request) -> dict[str, Any]:
    """The checked query parameters: 400 naming each one that is wrong, as ``/query/<name>``."""
    serializer = serializer_class(data=request.query_params)
    if not serializer.is_valid():
        raise ApiError(detail_errors(serializer.errors, "/query"), status.HTTP_400_BAD_REQUEST)
    data: dict[str, Any] = serializer.validated_data
    return data


def published_answer(event: Event) -> Answer:
    """201 with the envelope once on the bus; 202 while it waits for Redis; a warning under a deprecated version."""
    published = event.status == EventStatus.PUBLISHED
    body = {"event": json.loads(event.envelope), "id": event.envelope_id, "status": event.status}
    body.update(_deprecations([event]))
    return Answer(status.HTTP_201_CREATED if published else status.HTTP_202_ACCEPTED, body)


def _deprecations(events: list[Event]) -> dict[str, Any]:
    """A ``deprecated`` entry naming each deprecated schema version the events were accepted under (else nothing)."""
    deprecated = {
        event.schema_version.pk: event
        for event in events
        if event.schema_version.state == SchemaVersionState.DEPRECATED
    }
    if not deprecated:
        return {}
    since = dict(SchemaVersion.objects.filter(pk__in=deprecated).values_list("pk", "state_changed_at"))
    found = []
    for pk, event in deprecated.items():
        kind, number = event.event_type.name, event.schema_version.version
        message = f"schema v{number} of {kind} is deprecated: it is still accepted; ask a bus admin what replaces it"
        moment = since.get(pk)
        found.append(
            {
                "type": kind,
                "schema_version": number,
                "since": moment.isoformat() if moment else None,
                "message": message,
            }
        )
    return {"deprecated": found}


def deprecation_headers(body: dict[str, Any]) -> dict[str, str]:
    """RFC 9745's ``Deprecation`` header (``@`` and the Unix time it was deprecated) when the answer names one."""
    moments = [dt.datetime.fromisoformat(entry["since"]) for entry in body.get("deprecated", []) if entry["since"]]
    if not body.get("deprecated"):
        return {}
    return {"Deprecation": f"@{int(min(moments).timestamp())}" if moments else "@0"}


def batch_answer(outcome: BatchOutcome) -> Answer:
    """One result per item, in order: published or pending with its id, or dead-lettered with its errors."""
    results: list[dict[str, Any]] = []
    for index, item in enumerate(outcome.items):
        if isinstance(item, Event):
            results.append({"index": index, "status": str(item.status), "id": item.envelope_id})
        else:
            results.append({"index": index, "status": "dead_lettered", "dead_letter": item.pk, "errors": item.errors})
    pending = sum(event.status == EventStatus.PENDING for event in outcome.events)
    return Answer(
        status.HTTP_200_OK,
        {
            "results": results,
            "published": len(outcome.events) - pending,
            "pending": pending,
            "dead_lettered": len(outcome.dead_letters),
            **_deprecations(outcome.events),
        },
    )


class TopicEventsView(APIView):
    """POST /api/topics/<name>/events/: publish one event; GET: the published ones after an envelope id (catch up)."""

    parser_classes = [StrictJSONParser]
    refusal_action, refusal_target = AuditAction.PUBLISH_REFUSED, "topic:{name}"

    @extend_schema(
        operation_id="event_publish",
        request=EventInSerializer,
        parameters=[IDEMPOTENCY_KEY],
        responses={
            201: PublishedSerializer,
            202: OpenApiResponse(PublishedSerializer, description="accepted while Redis is down: pending"),
            **refusals(400, 401, 403, 404, 409, 413, 415, 422),
        },
    )
    def post(self, request: Request, name: str) -> Response:
        """Validate against the type's active schema and publish; a sensitive topic refuses (403)."""
        body = body_checked(request, settings.BUS_MAX_PAYLOAD_BYTES)
        topic = topic_for(request, name, PUBLISH_TOPIC)
        data = input_valid(EventInSerializer, request)
        answer = publish_once(
            actor_name=caller_name(request),
            key=request.headers.get("Idempotency-Key"),
            fingerprint=request_sha256(method="POST", path=request.path, body=body),
            publish=lambda: event_publish(
                topic=topic.name,
                event_type=data["type"],
                payload=data["payload"],
                actor=caller_actor(request),
                source=Source.API,
            ),
            answer=published_answer,
        )
        return Response(answer.body, status=answer.status, headers=deprecation_headers(answer.body))

    @extend_schema(
        operation_id="event_catch_up",
        parameters=[CatchUpQuerySerializer],
        responses={200: CatchUpPageSerializer, **refusals(400, 401, 403, 404, 422)},
    )
    def get(self, request: Request, name: str) -> Response:
        """What a service missed while down (Pub/Sub is at-most-once): envelopes after ``after``, oldest first."""
        topic = topic_for(request, name, VIEW_TOPIC)
        query = query_valid(CatchUpQuerySerializer, request)
        page = catch_up_page(topic=topic, after=query.get("after"), type_name=query.get("type"), size=query["limit"])
        return Response(CatchUpPageSerializer(page).data)


@functools.cache
def _batch_turns() -> threading.BoundedSemaphore:
    """The turns of batch requests in this process (``BUS_BATCH_CONCURRENCY`` at once; the others wait)."""
    return threading.BoundedSemaphore(settings.BUS_BATCH_CONCURRENCY)


class TopicEventsBatchView(APIView):
    """POST /api/topics/<name>/events/batch/: publish up to 1,000 events at once."""

    parser_classes = [StrictJSONParser]
    json_levels_around = 3  # the body, its events and each item wrap a payload: 64 levels count from there
    refusal_action, refusal_target = AuditAction.PUBLISH_REFUSED, "topic:{name}"

    @extend_schema(
        operation_id="event_publish_batch",
        request=BatchInSerializer,
        parameters=[IDEMPOTENCY_KEY],
        responses={200: BatchResultSerializer, **refusals(400, 401, 403, 404, 409, 413, 415)},
    )
    def post(self, request: Request, name: str) -> Response:
        """Publish the valid items, dead-letter the invalid ones; one transaction, one Redis round trip.

        Batches beyond ``BUS_BATCH_CONCURRENCY`` wait for their turn before their body is read.
        """
        with _batch_turns():
            # A batch may be as large as Django reads into memory; each payload still keeps the 64 KiB limit.
            body = body_checked(request, settings.DATA_UPLOAD_MAX_MEMORY_SIZE or settings.BUS_MAX_PAYLOAD_BYTES)
            topic = topic_for(request, name, PUBLISH_TOPIC)
            data = input_valid(BatchInSerializer, request)
            items = data["events"]  # a payload over 64 KiB refuses the batch with 413 (PayloadTooLargeError)
            answer = publish_once(
                actor_name=caller_name(request),
                key=request.headers.get("Idempotency-Key"),
                fingerprint=request_sha256(method="POST", path=request.path, body=body),
                publish=lambda: event_publish_batch(
                    topic=topic.name, items=items, actor=caller_actor(request), source=Source.API
                ),
                answer=batch_answer,
            )
        return Response(answer.body, status=answer.status, headers=deprecation_headers(answer.body))


class TopicListView(APIView):
    """GET /api/topics/: the topics the caller may see; POST: a bus admin creates one (with a first type)."""

    parser_classes = [StrictJSONParser]

    @extend_schema(operation_id="topic_list", responses={200: TopicListSerializer, **refusals(401)})
    def get(self, request: Request) -> Response:
        """Every visible topic, by name."""
        topics = list(topics_with_schemas(topics_for(request)))
        context = {"publishable": topic_names_publishable(caller(request), topics)}
        return Response({"topics": TopicSerializer(topics, many=True, context=context).data})

    @extend_schema(
        operation_id="topic_create",
        request=TopicInSerializer,
        responses={201: TopicSerializer, **refusals(400, 401, 403, 409, 413, 415, 422)},
    )
    def post(self, request: Request) -> Response:
        """Create a topic, and its first event type and version if given: all of them or nothing (bus admins)."""
        body_checked(request, settings.DATA_UPLOAD_MAX_MEMORY_SIZE or settings.BUS_MAX_PAYLOAD_BYTES)
        person = person_with_permission(request, "busapp.add_topic", "create topics")
        data = input_valid(TopicInSerializer, request)
        first = data.get("event_type") or {}
        if first:
            person_with_permission(request, "busapp.add_eventtype", "create event types")
        if "schema" in first:
            person_with_permission(request, "busapp.add_schemaversion", "add schema versions")
        try:
            topic = topic_create_with_type(
                name=data["name"],
                description=data["description"],
                sensitive=data["sensitive"],
                stream_retention=data.get("stream_retention"),
                type_name=first.get("name"),
                type_description=first.get("description", ""),
                schema=first.get("schema"),
                actor=person,
            )
        except BusInputError as refused:  # the dashboard's fields, named as this body names them
            moved: list[FieldError] = [
                {"path": _BODY_PATHS.get(error["path"], error["path"]), "message": error["message"]}
                for error in refused.errors
            ]
            raise type(refused)(moved) from None
        created = topics_with_schemas(Topic.objects.filter(pk=topic.pk)).get()
        context = {"publishable": topic_names_publishable(caller(request), [created])}
        return Response(TopicSerializer(created, context=context).data, status=status.HTTP_201_CREATED)


# Where the topic form's fields are in the API's body.
_BODY_PATHS = {
    "/type_name": "/event_type/name",
    "/type_description": "/event_type/description",
    "/schema": "/event_type/schema",
}


class TopicDetailView(APIView):
    """GET /api/topics/<name>/: one topic, with its event types and active schema versions."""

    @extend_schema(operation_id="topic_detail", responses={200: TopicSerializer, **refusals(401, 403, 404)})
    def get(self, request: Request, name: str) -> Response:
        """The topic, if the caller may see it."""
        topic = topic_for(request, name, VIEW_TOPIC)
        found = topics_with_schemas(Topic.objects.filter(pk=topic.pk)).get()
        context = {"publishable": topic_names_publishable(caller(request), [found])}
        return Response(TopicSerializer(found, context=context).data)


class JSONRefusalsMixin:
    """Refusals in the one JSON error shape, whatever the view renders when it answers (YAML, HTML)."""

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        """Render an error answer as JSON."""
        if isinstance(response, Response) and response.status_code >= status.HTTP_400_BAD_REQUEST:
            request.accepted_renderer, request.accepted_media_type = JSONRenderer(), JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]


class SchemaView(JSONRefusalsMixin, SpectacularAPIView):
    """GET /api/schema/: the OpenAPI document (YAML, or JSON with ?format=json), for callers of the API."""


class DocsView(JSONRefusalsMixin, SpectacularSwaggerSplitView):
    """GET /api/docs/: Swagger UI over the OpenAPI document, served from our own static files."""

    template_name = "api/docs.html"  # its page rules in a stylesheet, which the CSP allows


def not_found(request: HttpRequest, path: str) -> JsonResponse:
    """Any other path under /api/: 404 in the one error shape."""
    message = f"no API endpoint at {request.path}: see /api/docs/ for the ones there are"
    return JsonResponse({"errors": [{"path": "", "message": message}]}, status=status.HTTP_404_NOT_FOUND)
