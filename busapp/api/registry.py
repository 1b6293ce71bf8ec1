"""The schema registry over the API: event types, versions, the check of a draft, modes and states.

The same operations as the dashboard's, for services and CI. Writes are for people (bus admins,
by session): a service token is refused them. Reads, and the check of a draft (which saves
nothing), are for whoever may view the topic, service tokens included; a token's draft may
``$ref`` only its own topic's schemas, since the check resolves references against every
stored schema and a token sees only the topics of its scope.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.db import IntegrityError
from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from busapp.actions.registry import (
    ADD_SCHEMA_VERSION,
    CHANGE_EVENT_TYPE,
    CHANGE_SCHEMA_VERSION,
    event_type_compatibility_set,
    event_type_register,
    schema_version_propose,
    schema_version_state_set,
)
from busapp.api.authentication import ServiceCaller, caller_actor, person_with_permission, topic_for
from busapp.api.errors import ApiError, refusals
from busapp.api.parsers import StrictJSONParser
from busapp.api.schema_versions import versions_answer
from busapp.api.selectors import event_type_on, event_types_with_version_in_force, schema_version_on
from busapp.api.serializers import (
    CompatibilityInSerializer,
    DraftCheckInSerializer,
    DraftCheckSerializer,
    EventTypeInSerializer,
    EventTypeListSerializer,
    EventTypeRecordSerializer,
    SchemaVersionListSerializer,
    SchemaVersionRecordSerializer,
    VersionProposalInSerializer,
    VersionRequestSerializer,
    VersionStateInSerializer,
)
from busapp.api.views import body_checked, input_valid
from busapp.errors import SchemaInvalidError
from busapp.models import AuditAction, EventType, SchemaVersionRequest, Topic
from busapp.permissions import MANAGE_TOPIC, VIEW_TOPIC
from busapp.validation import schema_uri
from busapp.version_drafts import DraftCheck, version_draft_check

ADD_EVENT_TYPE = "busapp.add_eventtype"
REFERENCE_KEYWORDS = ("$ref", "$dynamicRef")


def registry_body_checked(request: Request) -> None:
    """A registry body (it may hold a schema of up to 256 KiB): 413 over what Django reads into memory."""
    body_checked(request, settings.DATA_UPLOAD_MAX_MEMORY_SIZE or settings.BUS_MAX_PAYLOAD_BYTES)


def event_type_answer(topic: Topic, event_type: EventType) -> dict[str, Any]:
    """One event type as the registry lists it, with the version in force."""
    return dict(EventTypeRecordSerializer(event_types_with_version_in_force(topic).get(pk=event_type.pk)).data)


def conflict(record: EventType | Topic) -> ApiError:
    """409 for a write that met another one made at the same moment (a unique constraint)."""
    message = f"{record} was changed by another request at the same moment: look at it, then try again"
    return ApiError([{"path": "", "message": message}], status.HTTP_409_CONFLICT)


class EventTypesView(APIView):
    """GET and POST /api/topics/<name>/types/: a topic's event types."""

    parser_classes = [StrictJSONParser]
    refusal_action, refusal_target = AuditAction.MANAGE_REFUSED, "topic:{name}"

    @extend_schema(operation_id="event_type_list", responses={200: EventTypeListSerializer, **refusals(401, 403, 404)})
    def get(self, request: Request, name: str) -> Response:
        """The topic's types by name, with their mode, policy and version in force."""
        topic = topic_for(request, name, VIEW_TOPIC)
        answer = {"topic": topic.name, "event_types": event_types_with_version_in_force(topic)}
        return Response(EventTypeListSerializer(answer).data)

    @extend_schema(
        operation_id="event_type_create",
        request=EventTypeInSerializer,
        responses={201: EventTypeRecordSerializer, **refusals(400, 401, 403, 404, 409, 413, 415, 422)},
    )
    def post(self, request: Request, name: str) -> Response:
        """Create a type, with its first version if a schema is given (bus admins managing the topic)."""
        registry_body_checked(request)
        person_with_permission(request, ADD_EVENT_TYPE, "create event types")
        topic = topic_for(request, name, MANAGE_TOPIC)
        data = input_valid(EventTypeInSerializer, request)
        if "schema" in data:
            person_with_permission(request, ADD_SCHEMA_VERSION, "add schema versions")
        try:
            created = event_type_register(
                topic=topic,
                name=data["name"],
                description=data["description"],
                schema=data.get("schema"),
                actor=caller_actor(request),
            )
        except IntegrityError:  # the same name, made at the same moment
            raise conflict(topic) from None
        return Response(event_type_answer(topic, created), status=status.HTTP_201_CREATED)


def request_answer(request: Request, proposed: SchemaVersionRequest) -> dict[str, Any]:
    """A breaking version waiting for a second bus admin, and where they decide it."""
    kind = proposed.event_type
    page = reverse("version-request", args=[kind.topic.name, kind.name, proposed.pk])
    answer = {
        "request": proposed.pk,
        "status": proposed.status,
        "topic": kind.topic.name,
        "type": kind.name,
        "findings": proposed.findings,
        "reason": proposed.reason,
        "requested_at": proposed.requested_at,
        "decide_at": request.build_absolute_uri(page),
    }
    return dict(VersionRequestSerializer(answer).data)


class VersionsView(APIView):
    """GET and POST /api/topics/<name>/types/<event_type>/versions/: list them, or save one as the dashboard does."""

    parser_classes = [StrictJSONParser]
    refusal_action, refusal_target = AuditAction.SCHEMA_VERSION_CREATE_REFUSED, "schema:{name}/{event_type}"

    @extend_schema(operation_id="version_list", responses={200: SchemaVersionListSerializer, **refusals(401, 403, 404)})
    def get(self, request: Request, name: str, event_type: str) -> Response:
        """Every version of the type, in any state, newest first."""
        return versions_answer(request, name, event_type)

    @extend_schema(
        operation_id="version_propose",
        request=VersionProposalInSerializer,
        responses={
            201: SchemaVersionRecordSerializer,
            202: OpenApiResponse(
                VersionRequestSerializer, description="a declared break on a sensitive topic: awaiting approval"
            ),
            **refusals(400, 401, 403, 404, 409, 413, 415, 422),
        },
    )
    def post(self, request: Request, name: str, event_type: str) -> Response:
        """Save the next version with a reason; a break needs ``declare_break``, and four eyes on a sensitive topic."""
        registry_body_checked(request)
        person = person_with_permission(request, ADD_SCHEMA_VERSION, "add schema versions")
        topic = topic_for(request, name, MANAGE_TOPIC)
        found = event_type_on(topic, event_type)
        data = input_valid(VersionProposalInSerializer, request)
        try:
            saved = schema_version_propose(
                event_type=found,
                schema=data["schema"],
                source=json.dumps(data["schema"], ensure_ascii=False),
                reason=data["reason"],
                declare_break=data["declare_break"],
                actor=person,
            )
        except SchemaInvalidError as error:
            raise ApiError([{"path": "/schema", "message": str(error)}], status.HTTP_422_UNPROCESSABLE_ENTITY) from None
        except IntegrityError:  # another version or request of the type was saved at the same moment
            raise conflict(found) from None
        if isinstance(saved, SchemaVersionRequest):
            return Response(request_answer(request, saved), status=status.HTTP_202_ACCEPTED)
        return Response(SchemaVersionRecordSerializer(saved).data, status=status.HTTP_201_CREATED)


def foreign_references(schema: Any, own_prefix: str, pointer: str = "") -> list[str]:
    """The pointers of ``$ref``s in ``schema`` that leave it and do not start with ``own_prefix``."""
    found: list[str] = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            where = f"{pointer}/{str(key).replace('~', '~0').replace('/', '~1')}"
            if key in REFERENCE_KEYWORDS and isinstance(value, str):
                if not value.startswith(("#", own_prefix)):
                    found.append(where)
            else:
                found += foreign_references(value, own_prefix, where)
    elif isinstance(schema, list):
        for index, item in enumerate(schema):
            found += foreign_references(item, own_prefix, f"{pointer}/{index}")
    return found


def token_references_checked(request: Request, event_type: EventType, schema: Any) -> None:
    """403 for a service token's draft that refers to a schema outside its topic (it would read other topics')."""
    if not isinstance(request.user, ServiceCaller):
        return
    own = schema_uri(event_type.topic.name, event_type.name, 1).rsplit("/", 2)[0] + "/"  # urn:hms:schema:<topic>/
    outside = foreign_references(schema, own)
    if outside:
        message = (
            f"a service token's draft may $ref only '#...' or its own topic's schemas ({own}...): "
            "a person who may view the other topic checks it"
        )
        raise ApiError([{"path": f"/schema{where}", "message": message} for where in outside], 403)


def draft_check_answer(check: DraftCheck) -> dict[str, Any]:
    """The verdict, findings, diff and dry run of a draft, as the check answers them."""
    kind = check.event_type
    dry_run = check.dry_run
    answer = {
        "topic": kind.topic.name,
        "type": kind.name,
        "number": check.number,
        "valid": not check.invalid,
        "invalid": check.invalid,
        "mode": check.mode,  # the mode it was checked under: BACKWARD at least on a sensitive topic
        "policy": kind.compatibility_policy,
        "compatible": check.saveable and not check.breaking,
        "needs_declared_break": check.saveable and check.breaking,
        "needs_approval": check.saveable and check.breaking and kind.topic.sensitive,
        "findings": [
            {
                "pointer": finding.pointer,
                "rule": finding.rule,
                "change": finding.change,
                "breaks": finding.breaks,
                "undecided": finding.undecided,
                "text": str(finding),
            }
            for finding in check.findings
        ],
        "against": check.against.version if check.against else None,
        "diff": [
            {
                "pointer": row.path,
                "before": row.before,
                "after": row.after,
                "change": row.change,
                "breaks": row.breaks,
            }
            for row in check.diff
        ],
        "dry_run": dry_run
        and {
            "letters": dry_run.letters,
            "letters_passing": dry_run.letters_passing,
            "events": dry_run.events,
            "events_refused": dry_run.events_refused,
            "refused_examples": [{"id": envelope, "error": error} for envelope, error in dry_run.refused_examples],
        },
    }
    return dict(DraftCheckSerializer(answer).data)


class VersionCheckView(APIView):
    """POST /api/topics/<name>/types/<event_type>/versions/check/: the verdict on a draft; nothing is saved."""

    parser_classes = [StrictJSONParser]

    @extend_schema(
        operation_id="version_check",
        request=DraftCheckInSerializer,
        responses={200: DraftCheckSerializer, **refusals(400, 401, 403, 404, 413, 415, 422)},
    )
    def post(self, request: Request, name: str, event_type: str) -> Response:
        """Validity, findings under the type's mode, a diff and a dry run; an invalid draft is 200, ``valid`` false."""
        registry_body_checked(request)
        topic = topic_for(request, name, VIEW_TOPIC)
        found = event_type_on(topic, event_type)
        data = input_valid(DraftCheckInSerializer, request)
        token_references_checked(request, found, data["schema"])
        against = data.get("against")
        if against is not None and not found.schema_versions.filter(version=against).exists():
            message = f"{found} has no version {against} to compare with"
            raise ApiError([{"path": "/against", "message": message}], status.HTTP_422_UNPROCESSABLE_ENTITY)
        check = version_draft_check(event_type=found, schema=data["schema"], against=against)
        return Response(draft_check_answer(check))


class CompatibilityView(APIView):
    """POST /api/topics/<name>/types/<event_type>/compatibility/: set what the type's next versions must keep."""

    parser_classes = [StrictJSONParser]
    refusal_action = AuditAction.EVENT_TYPE_COMPATIBILITY_REFUSED
    refusal_target = "event_type:{name}/{event_type}"

    @extend_schema(
        operation_id="event_type_compatibility_set",
        request=CompatibilityInSerializer,
        responses={200: EventTypeRecordSerializer, **refusals(400, 401, 403, 404, 409, 413, 415)},
    )
    def post(self, request: Request, name: str, event_type: str) -> Response:
        """Set the mode (and policy) with a reason (bus admins); the same mode again is 409."""
        registry_body_checked(request)
        person = person_with_permission(request, CHANGE_EVENT_TYPE, "set an event type's compatibility")
        topic = topic_for(request, name, VIEW_TOPIC)
        found = event_type_on(topic, event_type)
        data = input_valid(CompatibilityInSerializer, request)
        event_type_compatibility_set(
            event_type=found,
            mode=data["mode"],
            policy=data.get("policy", found.compatibility_policy),
            reason=data["reason"],
            actor=person,
        )
        return Response(event_type_answer(topic, found))


class VersionDetailView(APIView):
    """GET /api/topics/<name>/types/<event_type>/versions/<number>/: one schema version (a CloudEvent's dataschema)."""

    @extend_schema(
        operation_id="version_detail",
        responses={200: SchemaVersionRecordSerializer, **refusals(401, 403, 404)},
    )
    def get(self, request: Request, name: str, event_type: str, number: int) -> Response:
        """The version in any state, with its schema, for whoever may view the topic."""
        topic = topic_for(request, name, VIEW_TOPIC)
        version = schema_version_on(event_type_on(topic, event_type), number)
        return Response(SchemaVersionRecordSerializer(version).data)


class VersionStateView(APIView):
    """POST /api/topics/<name>/types/<event_type>/versions/<number>/state/: enable, deprecate or disable a version."""

    parser_classes = [StrictJSONParser]
    refusal_action = AuditAction.SCHEMA_VERSION_STATE_REFUSED
    refusal_target = "schema:{name}/{event_type}/v{number}"

    @extend_schema(
        operation_id="version_state_set",
        request=VersionStateInSerializer,
        responses={200: SchemaVersionRecordSerializer, **refusals(400, 401, 403, 404, 409, 413, 415)},
    )
    def post(self, request: Request, name: str, event_type: str, number: int) -> Response:
        """Set the state with a reason (bus admins); disabling the last usable version is 409."""
        registry_body_checked(request)
        person = person_with_permission(request, CHANGE_SCHEMA_VERSION, "change a version's state")
        topic = topic_for(request, name, VIEW_TOPIC)
        version = schema_version_on(event_type_on(topic, event_type), number)
        data = input_valid(VersionStateInSerializer, request)
        changed = schema_version_state_set(version=version, state=data["state"], reason=data["reason"], actor=person)
        return Response(SchemaVersionRecordSerializer(changed).data)
