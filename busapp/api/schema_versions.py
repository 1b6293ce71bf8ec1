"""An event type's schema versions over the API: listed for whoever may view the topic, added by bus admins."""

from __future__ import annotations

from django.conf import settings
from django.db import IntegrityError
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from busapp.actions.registry import schema_version_create
from busapp.api.authentication import caller_actor, person_with_permission, topic_for
from busapp.api.errors import ApiError, refusals
from busapp.api.parsers import StrictJSONParser
from busapp.api.selectors import event_type_on
from busapp.api.serializers import (
    SchemaVersionInSerializer,
    SchemaVersionListSerializer,
    SchemaVersionRecordSerializer,
)
from busapp.api.views import body_checked, input_valid
from busapp.errors import SchemaInvalidError
from busapp.models import AuditAction
from busapp.permissions import MANAGE_TOPIC, VIEW_TOPIC


def versions_answer(request: Request, name: str, event_type: str) -> Response:
    """Every version of the type, in any state, newest first, for whoever may view the topic."""
    topic = topic_for(request, name, VIEW_TOPIC)
    found = event_type_on(topic, event_type)
    versions = found.schema_versions.order_by("-version")
    answer = {"topic": topic.name, "type": found.name, "schema_versions": versions}
    return Response(SchemaVersionListSerializer(answer).data)


class SchemaVersionsView(APIView):
    """GET and POST /api/topics/<name>/types/<event_type>/schemas/: an event type's schema versions."""

    parser_classes = [StrictJSONParser]
    refusal_action, refusal_target = AuditAction.SCHEMA_VERSION_CREATE_REFUSED, "schema:{name}/{event_type}"

    @extend_schema(
        operation_id="schema_version_list",
        responses={200: SchemaVersionListSerializer, **refusals(401, 403, 404)},
    )
    def get(self, request: Request, name: str, event_type: str) -> Response:
        """Every version of the type, in any state, newest first."""
        return versions_answer(request, name, event_type)

    @extend_schema(
        operation_id="schema_version_create",
        request=SchemaVersionInSerializer,
        responses={201: SchemaVersionRecordSerializer, **refusals(400, 401, 403, 404, 409, 413, 415, 422)},
    )
    def post(self, request: Request, name: str, event_type: str) -> Response:
        """Add the next version (bus admins holding the manage right); an invalid or breaking schema is 422."""
        body_checked(request, settings.DATA_UPLOAD_MAX_MEMORY_SIZE or settings.BUS_MAX_PAYLOAD_BYTES)
        person_with_permission(request, "busapp.add_schemaversion", "add schema versions")
        topic = topic_for(request, name, MANAGE_TOPIC)
        found = event_type_on(topic, event_type)
        data = input_valid(SchemaVersionInSerializer, request)
        try:
            version = schema_version_create(
                event_type=found,
                schema=data["schema"],
                compatibility=data["compatibility"],
                actor=caller_actor(request),
            )
        except SchemaInvalidError as error:
            raise ApiError([{"path": "/schema", "message": str(error)}], status.HTTP_422_UNPROCESSABLE_ENTITY) from None
        except IntegrityError:  # another version of the type was saved at the same moment
            message = f"another version of {found} was added at the same moment: look at it, then try again"
            raise ApiError([{"path": "", "message": message}], status.HTTP_409_CONFLICT) from None
        return Response(SchemaVersionRecordSerializer(version).data, status=status.HTTP_201_CREATED)
