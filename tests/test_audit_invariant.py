"""Every door of the access matrix, for every role: whatever a request changes in the database is audited.

The requests are the access-matrix test's (tests/test_access_matrix.py), so a new URL gets
this check as soon as it gets its access rule. Each table is read whole before and after each
request (the demo data is small); a table that changed while the audit log did not is a
state change nobody can trace.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from django.apps import apps
from django.db import models

from busapp.models import AuditCheck, AuditEntry, AuditHead, IdempotencyKey, ServiceToken
from tests.test_access_matrix import RULES, World, answer, ordered, world_build

# What changes without being the bus's state, each with why it needs no audit entry of its own.
NOT_STATE: dict[str, str] = {
    AuditEntry._meta.label: "the audit log itself",
    AuditHead._meta.label: "the audit chain's head, moved by every entry",
    AuditCheck._meta.label: "a check of the audit log is its own record",
    IdempotencyKey._meta.label: "an API answer kept for a resend of a request already audited",
    "sessions.Session": "sign-in state; signing in and out is audited by busapp.signin",
    "axes.AccessAttempt": "django-axes' count of failed sign-ins (its lock-outs are audited)",
    "axes.AccessLog": "django-axes' sign-in log",
    "axes.AccessFailureLog": "django-axes' failed sign-in log",
}
# Fields that change as a request is served, not by what it asks: left out of the comparison.
BOOKKEEPING_FIELDS: dict[str, set[str]] = {
    ServiceToken._meta.label: {"last_used_at"},  # when a token was last used, kept to the minute
    "auth.User": {"last_login"},  # set by every sign-in (the test's own included); sign-ins are audited apart
}


def _watched() -> list[type[models.Model]]:
    """Every table of the project (many-to-many tables included) but those in NOT_STATE."""
    return [model for model in apps.get_models(include_auto_created=True) if model._meta.label not in NOT_STATE]


def _digest(model: type[models.Model]) -> str:
    """A digest of the table's every row, ordered by key, bookkeeping fields left out."""
    skipped = BOOKKEEPING_FIELDS.get(model._meta.label, set())
    names = [field.attname for field in model._meta.concrete_fields if field.name not in skipped]
    rows = model._base_manager.order_by("pk").values_list(*names)
    return hashlib.sha256(repr(list(rows)).encode()).hexdigest()


def _snapshot(watched: list[type[models.Model]]) -> dict[str, str]:
    """Every watched table's digest, by label."""
    return {model._meta.label: _digest(model) for model in watched}


@pytest.fixture
def world(demo: None, bus: Any) -> World:
    """The demo data and the objects the access matrix's cases name."""
    return world_build()


@pytest.mark.parametrize("route", sorted(RULES))
def test_every_change_a_request_makes_comes_with_its_audit_entry(route: str, world: World) -> None:
    """Refused requests change nothing; allowed ones that change a table append to the audit log too."""
    watched = _watched()
    problems = []
    for case in RULES[route]:
        for role in ordered(case.allowed):
            path = case.path_for(world, role)  # may make a fresh object, audited or not: not the request's doing
            before, entries = _snapshot(watched), AuditEntry.objects.count()
            response = answer(world, case, role, path)
            changed = sorted(label for label, digest in _snapshot(watched).items() if before[label] != digest)
            if changed and AuditEntry.objects.count() == entries:
                problems.append(
                    f"{case.method} {path} as {role} ({response.status_code}) changed {', '.join(changed)} "
                    "with no audit entry"
                )

    assert problems == [], "\n" + "\n".join(problems)


def test_the_watch_covers_the_bus_and_the_people_and_rights() -> None:
    """The tables of topics, events, dead letters, requests, tokens, users, groups and per-topic rights are watched."""
    labels = {model._meta.label for model in _watched()}

    assert {
        "busapp.Topic",
        "busapp.SchemaVersion",
        "busapp.Event",
        "busapp.DeadLetter",
        "busapp.PublishRequest",
        "busapp.BulkAction",
        "busapp.ServiceToken",
        "auth.User",
        "auth.Group",
        "auth.User_groups",
        "busapp.TopicUserGrant",
    } <= labels
