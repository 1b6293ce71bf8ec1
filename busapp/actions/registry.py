"""The schema registry's changes: roles, topics, event types and schema versions, each audited."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group, Permission, User
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Model
from django.urls import reverse
from django.utils import timezone

from busapp.actions.reasons import reason_checked
from busapp.audit import Actor, actor_parts, audit_record
from busapp.errors import (
    ActionRefusedError,
    FieldError,
    RecordInvalidError,
    RightRefusedError,
    SchemaInvalidError,
)
from busapp.models import (
    AuditAction,
    ChangeRequestStatus,
    Compatibility,
    CompatibilityMode,
    CompatibilityPolicy,
    EventType,
    SchemaVersion,
    SchemaVersionRequest,
    SchemaVersionState,
    Topic,
    validate_event_type_name,
    validate_stream_retention,
    validate_topic_name,
)
from busapp.permissions import MANAGE_TOPIC, ROLE_PERMISSIONS, topic_right_held
from busapp.validation import (
    schema_check,
    schema_fingerprint,
    schema_uri,
    stored_schema_registry,
)
from busapp.version_drafts import checked_mode, draft_findings, versions_of


def roles_ensure() -> None:
    """Create the three role groups with their global permissions (idempotent)."""
    for role, codenames in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role.value)
        permissions = Permission.objects.filter(content_type__app_label="busapp", codename__in=codenames)
        group.permissions.set(permissions)


@transaction.atomic
def record_change(*, obj: Model, changed_fields: Sequence[str], actor: Actor) -> None:
    """Save a Django admin edit of an event type's fields with its audit entry (topics: ``topic_update``)."""
    if not changed_fields:
        return
    obj.save(update_fields=list(changed_fields))
    model = obj._meta.model_name
    audit_record(
        actor=actor,
        action=AuditAction(f"{model}.update"),  # topic, eventtype, schemaversion
        target=f"{model}:{obj}",
        details={field: str(getattr(obj, field)) for field in changed_fields},
    )


ADD_TOPIC = "busapp.add_topic"  # the bus admins' right to create topics
CHANGE_TOPIC = "busapp.change_topic"  # the bus admins' right to edit any topic


def may_create_topics(user: User) -> bool:
    """Active bus admins create topics."""
    return user.is_active and user.has_perm(ADD_TOPIC)


def may_edit_topic(user: User, topic: Topic) -> bool:
    """Bus admins, and people holding manage on the topic, edit its description, owner and stream retention."""
    return user.is_active and (user.has_perm(CHANGE_TOPIC) or topic_right_held(user, MANAGE_TOPIC, topic))


def _taken_message(name: str) -> str:
    """Why a name another topic has is refused."""
    return f"topic name {name!r} is taken: another topic is already called that; choose another name"


def topic_name_problem(name: str) -> str | None:
    """Why a new topic may not be called ``name`` (the naming rule, or taken), or None when it may."""
    try:
        validate_topic_name(name)
    except ValidationError as error:
        return error.messages[0]
    if Topic.objects.filter(name=name).exists():
        return _taken_message(name)
    return None


def _validation_problems(error: ValidationError, path: str = "", *, prefix: str = "") -> list[FieldError]:
    """A Django ValidationError as the bus's problems, each at ``<prefix>/<field>`` (``path`` when it names none)."""
    if hasattr(error, "error_dict"):
        return [
            {"path": f"{prefix}/{field}" if field != NON_FIELD_ERRORS else path, "message": message}
            for field, messages in error.message_dict.items()
            for message in messages
        ]
    return [{"path": path, "message": message} for message in error.messages]


@transaction.atomic
def topic_create(
    *,
    name: str,
    actor: Actor,
    description: str = "",
    sensitive: bool = False,
    stream_retention: int | None = None,
    owner: Group | None = None,
) -> Topic:
    """Create a topic after checking its name against the naming rule (retention default: BUS_STREAM_MAXLEN)."""
    user, _ = actor_parts(actor)
    if stream_retention is None:
        stream_retention = settings.BUS_STREAM_MAXLEN
    topic = Topic(
        name=name,
        description=description,
        sensitive=sensitive,
        stream_retention=stream_retention,
        owner=owner,
        created_by=user,
    )
    topic.full_clean()
    topic.save()
    audit_record(
        actor=actor,
        action=AuditAction.TOPIC_CREATE,
        target=f"topic:{name}",
        details={
            "description": description,
            "sensitive": sensitive,
            "stream_retention": stream_retention,
            **({"owner": owner.name} if owner else {}),
        },
    )
    return topic


def _new_topic_problems(*, topic: Topic, type_name: str | None) -> list[FieldError]:
    """Every reason the topic or its first type cannot be created, each at its field (the schema: when saved)."""
    problems: list[FieldError] = []
    try:
        topic.full_clean(validate_unique=False)
    except ValidationError as error:
        problems += _validation_problems(error)
    if not any(problem["path"] == "/name" for problem in problems):
        taken = topic_name_problem(topic.name)
        if taken:
            problems.append({"path": "/name", "message": taken})
    if type_name is not None:
        try:
            validate_event_type_name(type_name)
        except ValidationError as error:
            problems += _validation_problems(error, "/type_name")
    return problems


@transaction.atomic
def topic_create_with_type(
    *,
    name: str,
    actor: User,
    type_name: str | None = None,
    schema: Any = None,
    source: str | None = None,
    description: str = "",
    owner: Group | None = None,
    sensitive: bool = False,
    stream_retention: int | None = None,
    type_description: str = "",
) -> Topic:
    """A bus admin creates a topic, with its first event type and that type's schema v1 if given: all, or nothing.

    The topic's and the type's problems are refused at once, each at its field (``/name``,
    ``/type_name`` ...); a schema that cannot be saved is refused at ``/schema`` and takes the
    topic and type back with it. Each record writes its audit entry.
    ``sensitive`` may be set either way here: a new topic has no events and no subscribers yet,
    so nobody can switch approval off behind anyone; later it changes only by four eyes.
    """
    if not may_create_topics(actor):
        message = f"{actor.get_username()} is not a bus admin: only bus admins create topics"
        raise RightRefusedError([{"path": "", "message": message}])
    if stream_retention is None:
        stream_retention = settings.BUS_STREAM_MAXLEN
    draft = Topic(
        name=name, description=description, sensitive=sensitive, stream_retention=stream_retention, owner=owner
    )
    problems = _new_topic_problems(topic=draft, type_name=type_name)
    if problems:
        raise RecordInvalidError(problems)
    try:
        with transaction.atomic():
            topic = topic_create(
                name=name,
                description=description,
                sensitive=sensitive,
                stream_retention=stream_retention,
                owner=owner,
                actor=actor,
            )
    except IntegrityError:  # created by someone else since the check
        raise ActionRefusedError([{"path": "/name", "message": _taken_message(name)}]) from None
    if type_name is None:
        return topic
    event_type = event_type_create(topic=topic, name=type_name, description=type_description, actor=actor)
    if schema is not None:
        try:
            schema_version_create(event_type=event_type, schema=schema, source=source, actor=actor)
        except SchemaInvalidError as error:  # leaving this block rolls the topic and its type back too
            raise RecordInvalidError([{"path": "/schema", "message": str(error)}]) from None
    return topic


def _shown(value: Any) -> Any:
    """A field's value as the audit log keeps it: a group by its name."""
    return value.name if isinstance(value, Group) else value


@transaction.atomic
def topic_update(
    *,
    topic: Topic,
    actor: User,
    description: str,
    owner: Group | None,
    stream_retention: int,
    reason: str = "",
) -> Topic:
    """Change a topic's description, owner or stream retention; one audit entry holds each change's before and after.

    The name never changes (subscribers listen on it) and ``sensitive`` changes only by four eyes
    (``busapp.actions.sensitivity``): neither is a parameter here.
    """
    if not may_edit_topic(actor, topic):
        message = f"{actor.get_username()} may not edit {topic.name}: bus admins, or people who manage the topic, may"
        raise RightRefusedError([{"path": "", "message": message}])
    locked = Topic.objects.select_for_update().get(pk=topic.pk)
    asked = {"description": description, "owner": owner, "stream_retention": stream_retention}
    before = {field: getattr(locked, field) for field in asked}
    changed = {field: (before[field], value) for field, value in asked.items() if before[field] != value}
    if not changed:
        message = "nothing changed: the description, owner and stream retention are as they were"
        raise ActionRefusedError([{"path": "", "message": message}])
    if "stream_retention" in changed:  # only what changes is checked: an older topic stays editable
        try:
            validate_stream_retention(stream_retention)
        except ValidationError as error:
            raise ActionRefusedError(_validation_problems(error, "/stream_retention")) from None
    for field, (_, value) in changed.items():
        setattr(locked, field, value)
    locked.save(update_fields=list(changed))
    details: dict[str, Any] = {field: [_shown(before), _shown(after)] for field, (before, after) in changed.items()}
    if reason.strip():
        details["reason"] = reason.strip()
    audit_record(actor=actor, action=AuditAction.TOPIC_UPDATE, target=f"topic:{locked.name}", details=details)
    return locked


@transaction.atomic
def event_type_create(
    *,
    topic: Topic,
    name: str,
    actor: Actor,
    description: str = "",
    mode: str = CompatibilityMode.BACKWARD,
    policy: str = CompatibilityPolicy.STRICT,
) -> EventType:
    """Create an event type on a topic after checking its name, mode and policy."""
    event_type = EventType(
        topic=topic, name=name, description=description, compatibility_mode=mode, compatibility_policy=policy
    )
    event_type.full_clean()
    event_type.save()
    audit_record(
        actor=actor,
        action=AuditAction.EVENT_TYPE_CREATE,
        target=f"event_type:{event_type}",
        details={"mode": mode, "policy": policy},
    )
    return event_type


@transaction.atomic
def event_type_register(
    *, topic: Topic, name: str, actor: Actor, description: str = "", schema: Any = None, path: str = ""
) -> EventType:
    """An event type and, given ``schema``, its first version: both or neither; refusals name paths under ``path``."""
    try:
        event_type = event_type_create(topic=topic, name=name, description=description, actor=actor)
    except ValidationError as error:
        raise RecordInvalidError(_validation_problems(error, f"{path}/name", prefix=path)) from None
    if schema is not None:
        try:
            schema_version_create(event_type=event_type, schema=schema, actor=actor)
        except SchemaInvalidError as error:
            raise RecordInvalidError([{"path": f"{path}/schema", "message": str(error)}]) from None
    return event_type


CHANGE_EVENT_TYPE = "busapp.change_eventtype"  # the bus admins' right to set a type's compatibility
_DECLARE_A_BREAK = "; to declare a breaking change, create it with compatibility 'none'"


def schema_version_check(*, event_type: EventType, schema: Any, compatibility: str, approved: bool = False) -> int:
    """Raise SchemaInvalidError when the schema cannot be the next version; return that version's number.

    ``compatibility`` 'backward' checks the schema against the event type's mode and policy
    (busapp/compatibility.py); 'none' declares a breaking change and skips that check, except on
    a sensitive topic, where a break needs a second bus admin (``approved``: one has approved it).
    A type whose mode is DISABLED takes no new version either way.
    """
    versions = versions_of(event_type)
    number = versions[0].version + 1 if versions else 1
    stored = stored_schema_registry()  # every stored schema, for $refs: read once for both checks
    topic = event_type.topic
    schema_check(schema, uri=schema_uri(topic.name, event_type.name, number), stored=stored)
    mode = checked_mode(event_type)
    unapproved_break = compatibility == Compatibility.NONE and topic.sensitive and not approved
    if compatibility == Compatibility.BACKWARD or mode == CompatibilityMode.DISABLED or unapproved_break:
        findings = draft_findings(event_type, schema, versions=versions, stored=stored)
        listed = "; ".join(str(finding) for finding in findings[:10])
        if findings and mode != CompatibilityMode.DISABLED and compatibility == Compatibility.NONE:
            page = reverse("version-new", args=[topic.name, event_type.name])
            raise SchemaInvalidError(
                f"breaks {mode} ({listed}) and {topic.name} is sensitive: a breaking version needs a second"
                f" bus admin's approval; propose it at {page}"
            )
        if findings:
            waiver = "" if mode == CompatibilityMode.DISABLED else _DECLARE_A_BREAK
            raise SchemaInvalidError(
                f"not compatible under {mode} ({event_type.compatibility_policy}): {listed}{waiver}"
            )
    return number


@transaction.atomic
def schema_version_create(
    *,
    event_type: EventType,
    schema: Any,
    actor: Actor,
    compatibility: str = Compatibility.BACKWARD,
    source: str | None = None,
    details: dict[str, Any] | None = None,
    author: User | None = None,
) -> SchemaVersion:
    """Save the next schema version of an event type; refuse an invalid or (in backward mode) breaking schema.

    ``source`` is the schema's text as written (key order kept for forms); ``author`` is who wrote
    it when a second bus admin saves it by approving it; ``details`` go into the audit entry.
    """
    number = schema_version_check(
        event_type=event_type, schema=schema, compatibility=compatibility, approved=author is not None
    )
    user, _ = actor_parts(actor)
    version = SchemaVersion.objects.create(
        event_type=event_type,
        version=number,
        schema=schema,
        source=source if source is not None else json.dumps(schema, ensure_ascii=False),
        fingerprint=schema_fingerprint(schema),
        compatibility=compatibility,
        created_by=author or user,
    )
    audit_record(
        actor=actor,
        action=AuditAction.SCHEMA_VERSION_CREATE,
        target=f"schema:{event_type}/v{number}",
        details={"fingerprint": version.fingerprint, "compatibility": compatibility, **(details or {})},
    )
    return version


ADD_SCHEMA_VERSION = "busapp.add_schemaversion"  # the bus admins' right to add versions (and decide breaking ones)
CHANGE_SCHEMA_VERSION = "busapp.change_schemaversion"  # the bus admins' right to change a version's state


def may_add_versions(user: User, topic: Topic) -> bool:
    """Bus admins who also manage the topic add its versions (as over the API)."""
    return user.is_active and user.has_perm(ADD_SCHEMA_VERSION) and topic_right_held(user, MANAGE_TOPIC, topic)


def _version_author_checked(actor: User, topic: Topic) -> None:
    """Refuse anyone who may not add versions to the topic."""
    if not may_add_versions(actor, topic):
        message = f"adding schema versions to {topic.name} needs a bus admin who manages the topic"
        raise RightRefusedError([{"path": "", "message": message}])


@transaction.atomic
def schema_version_propose(
    *, event_type: EventType, schema: Any, source: str, reason: str, declare_break: bool, actor: User
) -> SchemaVersion | SchemaVersionRequest:
    """Save a new version from the dashboard, with a reason; a breaking one on a sensitive topic waits for approval.

    A version the type's mode refuses is saved only when ``declare_break`` says so, as a
    declared break ('none'); on a sensitive topic it becomes a request a second bus admin
    decides, because one person could otherwise break every subscriber alone.
    """
    _version_author_checked(actor, event_type.topic)
    reason = reason_checked(reason)
    locked = EventType.objects.select_for_update().select_related("topic").get(pk=event_type.pk)
    versions = versions_of(locked)
    number = versions[0].version + 1 if versions else 1
    stored = stored_schema_registry()
    schema_check(schema, uri=schema_uri(locked.topic.name, locked.name, number), stored=stored)
    findings = draft_findings(locked, schema, versions=versions, stored=stored)
    if locked.compatibility_mode == CompatibilityMode.DISABLED:
        raise ActionRefusedError([{"path": "/mode", "message": f"{locked} is DISABLED: it takes no new versions"}])
    if not findings:
        return schema_version_create(
            event_type=locked, schema=schema, source=source, actor=actor, details={"reason": reason}
        )
    if not declare_break:
        message = (
            f"breaks {checked_mode(locked)} ({len(findings)} finding{'s' if len(findings) > 1 else ''}):"
            " tick 'declare a breaking change' to save it anyway"
        )
        raise ActionRefusedError([{"path": "/declare_break", "message": message}])
    listed = [str(finding) for finding in findings]
    if not locked.topic.sensitive:
        return schema_version_create(
            event_type=locked,
            schema=schema,
            source=source,
            compatibility=Compatibility.NONE,
            actor=actor,
            details={"reason": reason, "findings": listed},
        )
    waiting = SchemaVersionRequest.objects.filter(event_type=locked, status=ChangeRequestStatus.AWAITING_APPROVAL)
    if waiting.exists():
        message = f"breaking version request #{waiting.get().pk} is already waiting: decide or withdraw it first"
        raise ActionRefusedError([{"path": "/status", "message": message}])
    request = SchemaVersionRequest.objects.create(
        event_type=locked,
        schema=schema,
        source=source,
        fingerprint=schema_fingerprint(schema),
        findings=listed,
        reason=reason,
        requested_by=actor,
    )
    audit_record(
        actor=actor,
        action=AuditAction.SCHEMA_VERSION_REQUEST,
        target=f"schema:{locked}/request/{request.pk}",
        details={"fingerprint": request.fingerprint, "findings": listed, "reason": reason},
    )
    return request


def _open_request_locked(request_id: int) -> SchemaVersionRequest:
    """The request (its event type locked first, as a new version locks it), refused unless still open."""
    type_id = SchemaVersionRequest.objects.values_list("event_type_id", flat=True).get(pk=request_id)
    EventType.objects.select_for_update().get(pk=type_id)
    request = (
        SchemaVersionRequest.objects.select_for_update(of=("self",))
        .select_related("event_type__topic", "requested_by")
        .get(pk=request_id)
    )
    if not request.is_open:
        message = f"request #{request.pk} is already {request.get_status_display()}"
        raise ActionRefusedError([{"path": "/status", "message": message}])
    return request


@transaction.atomic
def schema_version_request_decide(*, request_id: int, approve: bool, reason: str, actor: User) -> SchemaVersionRequest:
    """A second bus admin approves (the version is saved now, checked again) or rejects a breaking version."""
    request = _open_request_locked(request_id)
    _version_author_checked(actor, request.event_type.topic)
    if request.requested_by_id == actor.pk:
        message = "nobody may approve or reject their own request: a second bus admin decides"
        raise RightRefusedError([{"path": "/approval", "message": message}])
    reason = reason_checked(reason)
    requested_by = request.requested_by.get_username()
    if approve:
        request.version = schema_version_create(
            event_type=request.event_type,
            schema=request.schema,
            source=request.source,
            compatibility=Compatibility.NONE,
            actor=actor,
            author=request.requested_by,
            details={"request": request.pk, "requested_by": requested_by, "reason": request.reason},
        )
    request.status = ChangeRequestStatus.APPROVED if approve else ChangeRequestStatus.REJECTED
    request.decided_by, request.decided_at, request.decision_reason = actor, timezone.now(), reason
    request.save(update_fields=["status", "decided_by", "decided_at", "decision_reason", "version"])
    audit_record(
        actor=actor,
        action=AuditAction.SCHEMA_VERSION_APPROVE if approve else AuditAction.SCHEMA_VERSION_REJECT,
        target=f"schema:{request.event_type}/request/{request.pk}",
        details={
            "requested_by": requested_by,
            "reason": reason,
            "version": request.version and request.version.version,
        },
    )
    return request


@transaction.atomic
def schema_version_request_cancel(*, request_id: int, actor: User) -> SchemaVersionRequest:
    """The requester withdraws a breaking version nobody has decided yet."""
    request = _open_request_locked(request_id)
    if request.requested_by_id != actor.pk:
        message = "only its requester may withdraw it; a second bus admin rejects it instead"
        raise ActionRefusedError([{"path": "/actor", "message": message}])
    request.status, request.decided_by, request.decided_at = ChangeRequestStatus.CANCELLED, actor, timezone.now()
    request.save(update_fields=["status", "decided_by", "decided_at"])
    audit_record(
        actor=actor,
        action=AuditAction.SCHEMA_VERSION_CANCEL,
        target=f"schema:{request.event_type}/request/{request.pk}",
        details={},
    )
    return request


@transaction.atomic
def schema_version_state_set(*, version: SchemaVersion, state: str, reason: str, actor: User) -> SchemaVersion:
    """A bus admin enables, deprecates or disables a version, with a reason; one version must stay usable."""
    if not (actor.is_active and actor.has_perm(CHANGE_SCHEMA_VERSION)):
        raise RightRefusedError([{"path": "", "message": "only bus admins change a schema version's state"}])
    if state not in SchemaVersionState.values:
        states = ", ".join(SchemaVersionState.values)
        raise ActionRefusedError([{"path": "/state", "message": f"is not a state: use one of {states}"}])
    reason = reason_checked(reason)
    EventType.objects.select_for_update().get(pk=version.event_type_id)
    locked = SchemaVersion.objects.select_related("event_type__topic").get(pk=version.pk)
    if locked.state == state:
        raise ActionRefusedError([{"path": "/state", "message": f"v{locked.version} is {state} already"}])
    if state == SchemaVersionState.DISABLED:
        usable = locked.event_type.schema_versions.active().exclude(pk=locked.pk)
        if not usable.exists():
            message = f"v{locked.version} is the only version publishers may use: add or enable another first"
            raise ActionRefusedError([{"path": "/state", "message": message}])
    before = locked.state
    locked.state, locked.state_changed_at = state, timezone.now()
    locked.save(update_fields=["state", "state_changed_at"])
    audit_record(
        actor=actor,
        action=AuditAction.SCHEMA_VERSION_STATE,
        target=f"schema:{locked.event_type}/v{locked.version}",
        details={"state": [before, state], "reason": reason},
    )
    return locked


@transaction.atomic
def event_type_compatibility_set(
    *, event_type: EventType, mode: str, policy: str, reason: str, actor: Actor
) -> EventType:
    """A bus admin sets what the type's next versions must keep (mode and policy), with a reason; audited.

    A named non-person actor such as ``cli:sync_schemas`` is whoever runs manage.py on the server:
    shell access is the right there, as for every command; a person needs the bus admins' right.
    """
    if isinstance(actor, User) and not (actor.is_active and actor.has_perm(CHANGE_EVENT_TYPE)):
        raise RightRefusedError([{"path": "", "message": "only bus admins set an event type's compatibility mode"}])
    problems: list[FieldError] = []
    if mode not in CompatibilityMode.values:
        modes = ", ".join(CompatibilityMode.values)
        problems.append({"path": "/mode", "message": f"is not a mode: use one of {modes}"})
    if policy not in CompatibilityPolicy.values:
        problems.append({"path": "/policy", "message": "is not a policy: use STRICT or LENIENT"})
    if problems:
        raise ActionRefusedError(problems)
    reason = reason_checked(reason)
    locked = EventType.objects.select_for_update().get(pk=event_type.pk)
    before = (locked.compatibility_mode, locked.compatibility_policy)
    if before == (mode, policy):
        raise ActionRefusedError([{"path": "/mode", "message": f"is {mode} ({policy}) already: nothing to change"}])
    locked.compatibility_mode, locked.compatibility_policy = mode, policy
    locked.save(update_fields=["compatibility_mode", "compatibility_policy"])
    audit_record(
        actor=actor,
        action=AuditAction.EVENT_TYPE_COMPATIBILITY,
        target=f"event_type:{locked}",
        details={"mode": [before[0], mode], "policy": [before[1], policy], "reason": reason},
    )
    return locked
