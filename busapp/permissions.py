"""Permission codenames, the three roles and what each may do, and the one per-topic check."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

    from busapp.models import Topic

VIEW_TOPIC = "view_topic"
PUBLISH_TOPIC = "publish_topic"
APPROVE_TOPIC = "approve_topic"
MANAGE_TOPIC = "manage_topic"
EXPORT_TOPIC = "export_topic"
TOPIC_RIGHTS = (VIEW_TOPIC, PUBLISH_TOPIC, APPROVE_TOPIC, MANAGE_TOPIC, EXPORT_TOPIC)


class Role(StrEnum):
    """The groups people are put in; per-topic rights come on top, through django-guardian."""

    POLICY_PUBLISHERS = "Policy publishers"
    AUDITORS = "Auditors"
    BUS_ADMINS = "Bus admins"


_READ_SCHEMAS = ("view_eventtype", "view_schemaversion")
_READ_EVERYTHING = (VIEW_TOPIC, *_READ_SCHEMAS, "view_event", "view_deadletter", "view_auditentry")

# Global (all-topic) permissions of each role, as busapp codenames.
ROLE_PERMISSIONS: dict[Role, tuple[str, ...]] = {
    # Policy staff see and publish only on topics granted to them one by one.
    Role.POLICY_PUBLISHERS: _READ_SCHEMAS,
    # Auditors read everything and export it; they change nothing.
    Role.AUDITORS: (*_READ_EVERYTHING, EXPORT_TOPIC),
    Role.BUS_ADMINS: (
        *_READ_EVERYTHING,
        *TOPIC_RIGHTS[1:],
        "add_topic",
        "change_topic",
        "add_eventtype",
        "change_eventtype",
        "add_schemaversion",
        "change_schemaversion",  # only the deprecated flag can change
    ),
}


def topic_right_held(user: User | AnonymousUser, right: str, topic: Topic) -> bool:
    """True when the user holds ``right`` on every topic (their role) or on this one (a grant)."""
    if not user.is_active:
        return False
    return user.has_perm(f"busapp.{right}") or user.has_perm(f"busapp.{right}", topic)
