"""The schema registry's changes: roles, topics, event types and schema versions, each audited."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group, Permission, User
from django.db import transaction
from django.db.models import Model

from busapp.actions.reasons import reason_checked
from busapp.audit import Actor, actor_parts, audit_record
from busapp.compatibility import mode_findings
from busapp.errors import ActionRefusedError, FieldError, RightRefusedError, SchemaInvalidError
from busapp.models import (
    AuditAction,
    Compatibility,
    CompatibilityMode,
    CompatibilityPolicy,
    EventType,
    SchemaVersion,
    Topic,
)
from busapp.permissions import ROLE_PERMISSIONS
from busapp.validation import (
    schema_check,
    schema_fingerprint,
    schema_uri,
    stored_schema_registry,
)


def roles_ensure() -> None:
    """Create the three role groups with their global permissions (idempotent)."""
    for role, codenames in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role.value)
        permissions = Permission.objects.filter(content_type__app_label="busapp", codename__in=codenames)
        group.permissions.set(permissions)


@transaction.atomic
def record_change(*, obj: Model, changed_fields: Sequence[str], actor: Actor) -> None:
    """Save an edit of some fields (a topic's description, a version's deprecated flag) with its audit entry."""
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


@transaction.atomic
def topic_create(
    *,
    name: str,
    actor: Actor,
    description: str = "",
    sensitive: bool = False,
    stream_retention: int | None = None,
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
        created_by=user,
    )
    topic.full_clean()
    topic.save()
    audit_record(
        actor=actor,
        action=AuditAction.TOPIC_CREATE,
        target=f"topic:{name}",
        details={"description": description, "sensitive": sensitive, "stream_retention": stream_retention},
    )
    return topic


@transaction.atomic
def event_type_create(*, topic: Topic, name: str, actor: Actor, description: str = "") -> EventType:
    """Create an event type on a topic after checking its name."""
    event_type = EventType(topic=topic, name=name, description=description)
    event_type.full_clean()
    event_type.save()
    audit_record(actor=actor, action=AuditAction.EVENT_TYPE_CREATE, target=f"event_type:{event_type}", details={})
    return event_type


CHANGE_EVENT_TYPE = "busapp.change_eventtype"  # the bus admins' right to set a type's compatibility
_DECLARE_A_BREAK = "; to declare a breaking change, create it with compatibility 'none'"


def schema_version_check(*, event_type: EventType, schema: Any, compatibility: str) -> int:
    """Raise SchemaInvalidError when the schema cannot be the next version; return that version's number.

    ``compatibility`` 'backward' checks the schema against the event type's mode and policy
    (busapp/compatibility.py); 'none' declares a breaking change and skips that check. A type
    whose mode is DISABLED takes no new version either way.
    """
    versions = list(SchemaVersion.objects.filter(event_type=event_type).order_by("-version"))
    number = versions[0].version + 1 if versions else 1
    topic = event_type.topic.name
    stored = stored_schema_registry()  # every stored schema, for $refs: read once for both checks
    schema_check(schema, uri=schema_uri(topic, event_type.name, number), stored=stored)
    mode = event_type.compatibility_mode
    if versions and (compatibility == Compatibility.BACKWARD or mode == CompatibilityMode.DISABLED):
        findings = mode_findings(
            schema,
            [(version.version, version.schema) for version in versions if not version.deprecated],
            mode=CompatibilityMode(mode),
            policy=CompatibilityPolicy(event_type.compatibility_policy),
            registry=stored,
            new_uri=schema_uri(topic, event_type.name, number),
            uri_of=lambda earlier: schema_uri(topic, event_type.name, earlier),
        )
        if findings:
            waiver = "" if mode == CompatibilityMode.DISABLED else _DECLARE_A_BREAK
            listed = "; ".join(str(finding) for finding in findings[:10])
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
) -> SchemaVersion:
    """Save the next schema version of an event type; refuse an invalid or (in backward mode) breaking schema."""
    number = schema_version_check(event_type=event_type, schema=schema, compatibility=compatibility)
    user, _ = actor_parts(actor)
    version = SchemaVersion.objects.create(
        event_type=event_type,
        version=number,
        schema=schema,
        source=json.dumps(schema, ensure_ascii=False),
        fingerprint=schema_fingerprint(schema),
        compatibility=compatibility,
        created_by=user,
    )
    audit_record(
        actor=actor,
        action=AuditAction.SCHEMA_VERSION_CREATE,
        target=f"schema:{event_type}/v{number}",
        details={"fingerprint": version.fingerprint, "compatibility": compatibility},
    )
    return version


@transaction.atomic
def event_type_compatibility_set(
    *, event_type: EventType, mode: str, policy: str, reason: str, actor: User
) -> EventType:
    """A bus admin sets what the type's next versions must keep (mode and policy), with a reason; audited."""
    if not (actor.is_active and actor.has_perm(CHANGE_EVENT_TYPE)):
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
