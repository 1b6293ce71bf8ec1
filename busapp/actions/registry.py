"""The schema registry's changes: roles, topics, event types and schema versions, each audited."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.db.models import Model

from busapp.audit import Actor, actor_parts, audit_record
from busapp.errors import (
    SchemaInvalidError,
)
from busapp.models import (
    AuditAction,
    Compatibility,
    EventType,
    SchemaVersion,
    Topic,
)
from busapp.permissions import ROLE_PERMISSIONS
from busapp.validation import (
    backward_incompatibilities,
    schema_check,
    schema_fingerprint,
    schema_uri,
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


def schema_version_check(*, event_type: EventType, schema: Any, compatibility: str) -> int:
    """Raise SchemaInvalidError when the schema cannot be the next version; return that version's number."""
    latest = SchemaVersion.objects.filter(event_type=event_type).order_by("-version").first()
    number = latest.version + 1 if latest else 1
    schema_check(schema, uri=schema_uri(event_type.topic.name, event_type.name, number))
    if latest is not None and compatibility == Compatibility.BACKWARD:
        problems = backward_incompatibilities(latest.schema, schema)
        if problems:
            raise SchemaInvalidError(
                f"not backward compatible with v{latest.version}: "
                + "; ".join(problems)
                + " (create it with compatibility 'none' to allow a breaking change)"
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
