"""The access matrix: every URL and websocket route, for every role, allowed or refused as issue 6's rules say.

The rules are written from the principles, not read off the code. A route without a rule
fails ``test_every_route_has_a_rule_and_every_rule_a_route``: give a new URL its rule here.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import time_machine
from asgiref.sync import sync_to_async
from channels.testing.websocket import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.http import HttpResponse
from django.http.response import HttpResponseBase
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, include, re_path
from django.urls import path as url
from django.utils import timezone

from busapp.actions.dead_letters import bulk_action_start, dead_letter_create
from busapp.actions.publishing import event_publish
from busapp.actions.registry import schema_version_propose, schema_version_request_cancel
from busapp.actions.sensitivity import topic_sensitivity_cancel, topic_sensitivity_request
from busapp.actions.tokens import service_token_create
from busapp.models import (
    BulkAction,
    BulkActionKind,
    DeadLetter,
    Event,
    EventType,
    PublishRequest,
    SavedFilter,
    SavedFilterPage,
    SchemaVersionRequest,
    Source,
    Subscriber,
    Topic,
    TopicSensitivityChange,
    TopicUserGrant,
)
from busapp.permissions import Role
from busapp.publishing import relay_pending
from busapp.routing import websocket_urlpatterns
from busapp.selectors import grant_key
from hmsadmin.asgi import application
from tests.support import WITHHOLDING_TABLE, publish_deduction, session_cookie, withholding_request

ANONYMOUS, TOKEN = "anonymous", "token"
PEOPLE = ("auditor", "policy", "policy2", "admin")
# The order every case runs in, refused roles first: an allowed POST may change what the next role finds.
ROLES = (ANONYMOUS, TOKEN, *PEOPLE)

EVERYONE = frozenset(ROLES)
SIGNED_IN = frozenset(PEOPLE)
CALLERS = SIGNED_IN | {TOKEN}  # everyone the API knows: people by session, a service by its token
PUBLISHERS = frozenset({"policy", "policy2", "admin"})
AUDITORS = frozenset({"auditor", "admin"})  # the audit log, exports and the Django admin (both are staff)
ADMINS = frozenset({"admin"})
NOBODY: frozenset[str] = frozenset()

# Every route in these URL namespaces shares one rule, keyed "<namespace>:".
WHOLE_NAMESPACES = {"admin"}
REMOTE = "10.0.0.9"
LETTER_BODY = json.dumps({"type": "tax_policy.updated", "payload": {"standard_deduction": -5}})
WITHHOLDING_VERSIONS = "/topics/irs.withholding/types/withholding_table.published/versions/"
TAX_EVENT = {"type": "tax_policy.updated", "payload": {"standard_deduction": 100}}
TAX_TYPE_API = "/api/topics/tax-policy/types/tax_policy.updated/"
WITHHOLDING_TYPE_API = "/api/topics/irs.withholding/types/withholding_table.published/"


@dataclass
class World:
    """The objects the cases' paths name, made once per test on top of the demo data."""

    token_text: str
    spare_token_prefix: str
    event: Event
    sensitive_event: Event
    letter: DeadLetter
    bulk: BulkAction
    waiting: PublishRequest
    grant: str
    subscriber: int = 0  # the newest subscriber fresh_subscriber made
    _names: Iterator[int] = field(default_factory=itertools.count)

    def new_request(self) -> PublishRequest:
        """A fresh publish on irs.withholding by policy, waiting for approval."""
        return withholding_request(User.objects.get(username="policy"))

    def new_sensitivity_change(self, requester: str) -> TopicSensitivityChange:
        """A fresh request, by ``requester`` (a bus admin), to make tax-policy sensitive; an open one is cancelled."""
        tax = Topic.objects.get(name="tax-policy")
        for waiting in TopicSensitivityChange.objects.filter(topic=tax, status="awaiting_approval"):
            topic_sensitivity_cancel(change_id=waiting.pk, actor=waiting.requested_by)
        person, _ = User.objects.get_or_create(username=requester)
        person.groups.add(Group.objects.get(name=Role.BUS_ADMINS.value))
        person = User.objects.get(pk=person.pk)  # permissions are cached per instance
        return topic_sensitivity_request(topic=tax, sensitive=True, reason="matrix", actor=person)

    def new_version_request(self, requester: str) -> SchemaVersionRequest:
        """A fresh breaking version of irs.withholding proposed by ``requester`` (a bus admin); open ones withdrawn."""
        kind = EventType.objects.select_related("topic").get(name="withholding_table.published")
        for waiting in SchemaVersionRequest.objects.filter(event_type=kind, status="awaiting_approval"):
            schema_version_request_cancel(request_id=waiting.pk, actor=waiting.requested_by)
        person, _ = User.objects.get_or_create(username=requester)
        person.groups.add(Group.objects.get(name=Role.BUS_ADMINS.value))
        person = User.objects.get(pk=person.pk)  # permissions are cached per instance
        schema = {"type": "object", "required": ["matrix"], "properties": {"matrix": {"type": "string"}}}
        proposed = schema_version_propose(
            event_type=kind, schema=schema, source=json.dumps(schema), reason="matrix", declare_break=True, actor=person
        )
        assert isinstance(proposed, SchemaVersionRequest)
        return proposed

    def fresh_subscriber(self, path: str) -> str:
        """``path``, once a fresh subscriber (``self.subscriber``) exists: a follow of it is always a change."""
        self.subscriber = Subscriber.objects.create(name=f"matrix-follow-{next(self._names)}").pk
        return path

    def on_the_bus(self, path: str) -> str:
        """``path``, once the world's events are published: these tests never commit, so the relay sends them."""
        later = timezone.now() + dt.timedelta(seconds=settings.BUS_RELAY_GRACE_SECONDS + 1)
        with time_machine.travel(later, tick=False):
            relay_pending()
        return path

    def filter_of(self, role: str) -> SavedFilter:
        """A fresh saved filter of the role's person (policy's for callers without one)."""
        owner = User.objects.get(username=role if role in PEOPLE else "policy")
        name = f"matrix {next(self._names)}"
        return SavedFilter.objects.create(owner=owner, page=SavedFilterPage.EVENTS, name=name, query="topic=tax-policy")


def world_build() -> World:
    """The token, events, a dead letter, a bulk action, a waiting request and a grant the cases use."""
    admin, policy, policy2 = (User.objects.get(username=name) for name in ("admin", "policy", "policy2"))
    tax = Topic.objects.get(name="tax-policy")
    _, token_text = service_token_create(
        name="matrix-feed",
        topics=[tax],
        actor=admin,
        can_publish=True,
        can_view=True,
        subscriber=Subscriber.objects.get(name="e-file"),  # its receipts: e-file follows tax-policy
    )
    spare, _ = service_token_create(name="matrix-spare", topics=[tax], actor=admin)
    letter = dead_letter_create(
        topic=tax,
        raw=LETTER_BODY,
        errors=[{"path": "/payload/standard_deduction", "message": "must be 0 or more"}],
        source=Source.EXTERNAL,
        actor="external",
    )
    sensitive_event = event_publish(
        topic="irs.withholding",
        event_type="withholding_table.published",
        payload=WITHHOLDING_TABLE,
        actor=policy,
        source=Source.FORM,
        approved_by=policy2,
    )
    grant = TopicUserGrant.objects.filter(user=policy, content_object=tax).first()
    assert grant is not None
    return World(
        token_text=token_text,
        spare_token_prefix=spare.prefix,
        event=publish_deduction(100),
        sensitive_event=sensitive_event,
        letter=letter,
        bulk=bulk_action_start(
            topic=tax, kind=BulkActionKind.REPLAY, letter_ids=[letter.pk], actor=admin, rate_per_second=50
        ),
        waiting=withholding_request(policy),
        grant=grant_key(grant),
    )


PathOf = Callable[[World, str], str]


@dataclass(frozen=True)
class Case:
    """One request, the roles allowed to make it, and how a refusal of the others looks when it is not the usual."""

    method: str
    path: str | PathOf  # a str is formatted with w (the World)
    allowed: frozenset[str]
    data: dict[str, Any] | Callable[[World], dict[str, Any]] | None = None
    remote_addr: str = "127.0.0.1"
    refused_as: int | None = None  # every refusal is this status (the route asks nobody to sign in)
    hidden_as_404: bool = False  # a refused caller with credentials may get 404: the object is not shown to exist
    answers: int | None = None  # every role gets this status

    def path_for(self, world: World, role: str) -> str:
        """The concrete path, for this role (some cases make a fresh object per role)."""
        return self.path.format(w=world) if isinstance(self.path, str) else self.path(world, role)


def get(path: str | PathOf, allowed: frozenset[str], **options: Any) -> Case:
    """A GET case."""
    return Case("GET", path, allowed, **options)


def post(
    path: str | PathOf,
    allowed: frozenset[str],
    data: dict[str, Any] | Callable[[World], dict[str, Any]] | None = None,
    **options: Any,
) -> Case:
    """A POST case (form-encoded, or JSON under /api/)."""
    return Case("POST", path, allowed, data or {}, **options)


RULES: dict[str, tuple[Case, ...]] = {
    # Sign-in, health and metrics ask nobody to sign in; signing out is harmless for anyone.
    "login": (get("/accounts/login/", EVERYONE),),
    "logout": (post("/accounts/logout/", EVERYONE),),
    # Public, and honest: no bus worker beats in this world, so everyone is told 503 (tests/test_operations.py).
    "health": (get("/healthz", EVERYONE, answers=503),),
    "metrics": (
        get("/metrics", EVERYONE),
        get("/metrics", NOBODY, remote_addr=REMOTE, refused_as=403),
    ),
    # Reading: every signed-in person who may view the topic (all four view both demo topics).
    "dashboard": (get("/", SIGNED_IN),),
    "dashboard-series": (get("/dashboard/series/", SIGNED_IN),),
    "topic-list": (get("/topics/", SIGNED_IN),),
    "topic-detail": (get("/topics/tax-policy/", SIGNED_IN), get("/topics/irs.withholding/", SIGNED_IN)),
    "topic-in-force": (get("/topics/tax-policy/in-force/", SIGNED_IN),),
    "subscribers-drifting": (get("/subscribers/drifting/", SIGNED_IN),),
    "live": (get("/live/", SIGNED_IN),),
    "live-events": (get("/live/events/", SIGNED_IN),),
    "dead-letters": (get("/dlq/", SIGNED_IN),),
    "dead-letter": (get("/dlq/{w.letter.pk}/", SIGNED_IN),),
    "event-list": (get("/events/", SIGNED_IN),),
    # The confirmation a grant chip's revoke opens (a key no grant has: it says there is nothing to revoke).
    "access-revoke-confirm": (get("/access/revoke/confirm/?grants=u999999", ADMINS),),
    # Each person's own requests and those they may decide; decided ones on the topics they see.
    "publish-requests": (get("/requests/", SIGNED_IN),),
    "event-detail": (
        get("/events/{w.event.envelope_id}/", SIGNED_IN),
        get("/events/{w.sensitive_event.envelope_id}/", SIGNED_IN),
    ),
    "event-services": (get("/events/{w.event.envelope_id}/services/", SIGNED_IN),),
    "bulk-action": (get("/dlq/bulk/{w.bulk.pk}/", SIGNED_IN),),
    "publish-result": (get("/topics/tax-policy/published/{w.event.envelope_id}/", SIGNED_IN),),
    "publish-request": (get("/topics/irs.withholding/requests/{w.waiting.pk}/", SIGNED_IN),),
    # Publishing: publish_topic.
    "topic-publish": (
        get("/topics/tax-policy/publish/", PUBLISHERS),
        get("/topics/irs.withholding/publish/", PUBLISHERS),
        post(
            "/topics/tax-policy/publish/",
            PUBLISHERS,
            {"type": "tax_policy.updated", "mode": "raw", "payload_json": '{"standard_deduction": 100}'},
        ),
    ),
    "topic-publish-confirm": (post("/topics/tax-policy/publish/confirm/", PUBLISHERS, {"token": ""}),),
    # Deciding: approve_topic, never on one's own request (policy asked for each of these).
    "publish-request-decide": (
        post(
            lambda w, _: f"/topics/irs.withholding/requests/{w.new_request().pk}/decide/",
            frozenset({"policy2", "admin"}),
            {"decision": "approve", "reason": "matrix"},
        ),
    ),
    # Cancelling (the view's rule): the requester, or anyone who may approve on the topic.
    "publish-request-cancel": (
        post(
            lambda w, _: f"/topics/irs.withholding/requests/{w.new_request().pk}/cancel/",
            PUBLISHERS,
            {"reason": "matrix"},
        ),
    ),
    # A topic's sensitive flag: bus admins ask; a second bus admin decides (admin2 asked for these).
    # An event type's compatibility mode: bus admins set it, with a reason.
    "event-type-compatibility": (
        post(
            "/topics/tax-policy/types/tax_policy.updated/compatibility/",
            ADMINS,
            {"mode": "FULL", "policy": "STRICT", "reason": "matrix"},
        ),
    ),
    # Schema versions: bus admins who manage the topic propose and decide; bus admins set states.
    "version-new": (
        get("/topics/tax-policy/types/tax_policy.updated/versions/new/", ADMINS),
        post(
            "/topics/tax-policy/types/tax_policy.updated/versions/new/",
            ADMINS,
            {"schema": '{"type": "object"}', "action": "check"},
        ),
    ),
    "version-state": (
        post(
            "/topics/tax-policy/types/tax_policy.updated/versions/state/",
            ADMINS,
            {"version": "1", "state": "deprecated", "reason": "matrix"},
        ),
    ),
    "version-request": (
        get(
            lambda w, _: f"{WITHHOLDING_VERSIONS}requests/{w.new_version_request('admin2').pk}/",
            ADMINS,
        ),
    ),
    "version-request-decide": (
        post(
            lambda w, _: f"{WITHHOLDING_VERSIONS}requests/{w.new_version_request('admin2').pk}/decide/",
            ADMINS,
            {"decision": "reject", "reason": "matrix"},
        ),
    ),
    "version-request-cancel": (
        post(lambda w, _: f"{WITHHOLDING_VERSIONS}requests/{w.new_version_request('admin').pk}/cancel/", ADMINS),
    ),
    # Topics in the dashboard: bus admins create them (and ask the live name check); bus admins, or people
    # managing the topic, edit it (nobody in the demo manages one by grant).
    "topic-new": (
        get("/topics/new/", ADMINS),
        post(
            "/topics/new/",
            ADMINS,
            {
                "name": "matrix.topic.created",
                "stream_retention": "1000",
                "type_name": "matrix.created",
                "schema": '{"type": "object"}',
            },
        ),
    ),
    "topic-name-check": (get("/topics/new/name-check/?name=matrix.topic", ADMINS),),
    "topic-edit": (
        get("/topics/tax-policy/edit/", ADMINS),
        post(
            "/topics/tax-policy/edit/",
            ADMINS,
            {"description": "matrix", "stream_retention": "100000", "owner": ""},
        ),
    ),
    "topic-sensitivity": (
        get("/topics/tax-policy/sensitivity/", ADMINS),
        post("/topics/tax-policy/sensitivity/", ADMINS, {"sensitive": "yes", "reason": "matrix"}),
    ),
    "topic-sensitivity-decide": (
        post(
            lambda w, _: f"/topics/tax-policy/sensitivity/{w.new_sensitivity_change('admin2').pk}/decide/",
            ADMINS,
            {"decision": "reject", "reason": "matrix"},
        ),
    ),
    "topic-sensitivity-cancel": (
        post(lambda w, _: f"/topics/tax-policy/sensitivity/{w.new_sensitivity_change('admin').pk}/cancel/", ADMINS),
    ),
    # Dead letters and bulk actions change things: manage_topic.
    "dead-letter-replay": (
        post(
            "/dlq/{w.letter.pk}/replay/",
            ADMINS,
            {"type": "tax_policy.updated", "mode": "raw", "payload_json": '{"standard_deduction": 100}'},
        ),
    ),
    "dead-letter-discard": (post("/dlq/{w.letter.pk}/discard/", ADMINS, {"reason": "matrix"}),),
    "bulk-estimate": (post("/dlq/bulk/estimate/", ADMINS, {"topic": "tax-policy", "kind": "replay"}),),
    "bulk-start": (post("/dlq/bulk/", ADMINS, {"topic": "tax-policy", "kind": "replay", "rate_per_second": "50"}),),
    "bulk-cancel": (post("/dlq/bulk/{w.bulk.pk}/cancel/", ADMINS),),
    # Exports and the audit log: auditors and bus admins.
    # Subscribers: auditors and bus admins see them; bus admins register them and say what they follow.
    "subscribers": (
        get("/subscribers/", AUDITORS),
        post(lambda w, role: "/subscribers/", ADMINS, lambda w: {"name": f"matrix-{next(w._names)}"}),
    ),
    "subscriber-follow": (
        post(
            lambda w, _: w.fresh_subscriber("/subscribers/follows/"),
            ADMINS,
            lambda w: {"subscriber": w.subscriber, "topic": "irs.withholding", "apply_deadline": "90"},
        ),
    ),
    "subscriber-unfollow": (post("/subscribers/e-file/follows/tax-policy/stop/", ADMINS),),
    "event-export": (get("/events/export.csv", AUDITORS), get("/events/export.cloudevents.ndjson", AUDITORS)),
    "audit-log": (get("/audit/", AUDITORS),),
    "audit-check": (post("/audit/check/", AUDITORS),),
    "audit-export": (get("/audit/export.csv", AUDITORS),),
    # Saved filters: anyone signed in, their own only.
    "saved-filter-create": (
        post("/filters/", SIGNED_IN, {"page": "events", "name": "mine", "query": "topic=tax-policy"}),
    ),
    "saved-filter-delete": (
        post(lambda w, role: f"/filters/{w.filter_of(role).pk}/delete/", SIGNED_IN),
        post(lambda w, _: f"/filters/{w.filter_of('policy').pk}/delete/", frozenset({"policy"}), hidden_as_404=True),
    ),
    # /access/: bus admins only.
    "access": (get("/access/", ADMINS),),
    "access-grant": (post("/access/grants/", ADMINS),),
    "access-revoke": (post("/access/revoke/", ADMINS, lambda w: {"grants": w.grant, "reason": "matrix"}),),
    "access-role": (post("/access/roles/", ADMINS),),
    "access-tokens": (get("/access/tokens/", ADMINS), post("/access/tokens/", ADMINS)),
    "access-token-revoke": (post("/access/tokens/{w.spare_token_prefix}/revoke/", ADMINS),),
    # The Django admin: staff only.
    "admin:": (
        get("/admin/", AUDITORS),
        get("/admin/busapp/event/", AUDITORS),
        get("/admin/busapp/auditentry/", AUDITORS),
    ),
    # The JSON API: 401 without credentials, 403 without the right; the token holds view and publish on tax-policy.
    "api-schema": (get("/api/schema/", CALLERS),),
    "api-docs": (get("/api/docs/", CALLERS), get("/api/docs/?script", CALLERS)),
    # AsyncAPI: the document of the topics the caller may see, its page, and the page's sandboxed renderer frame.
    "api-asyncapi-json": (get("/api/asyncapi.json", CALLERS),),
    "api-asyncapi-yaml": (get("/api/asyncapi.yaml", CALLERS),),
    "api-asyncapi-docs": (get("/api/asyncapi/", CALLERS),),
    "api-asyncapi-frame": (get("/api/asyncapi/frame/", CALLERS),),
    "api-topic-list": (get("/api/topics/", CALLERS), post("/api/topics/", ADMINS, {"name": "matrix.topic"})),
    "api-topic-detail": (get("/api/topics/tax-policy/", CALLERS), get("/api/topics/irs.withholding/", SIGNED_IN)),
    "api-event-publish": (
        post("/api/topics/tax-policy/events/", PUBLISHERS | {TOKEN}, TAX_EVENT),
        # A minimal body: 400 once the right is checked (a valid one is refused on a sensitive topic anyway).
        post("/api/topics/irs.withholding/events/", PUBLISHERS),
        # GET is the catch-up of a service that was down: whoever may view the topic (the token: its scope only).
        get("/api/topics/tax-policy/events/", CALLERS),
        get("/api/topics/irs.withholding/events/", SIGNED_IN),
    ),
    # The event in force, read at start-up: whoever may view the topic.
    "api-event-in-force": (
        get(lambda w, _: w.on_the_bus(f"{TAX_TYPE_API}latest/"), CALLERS),
        get(lambda w, _: w.on_the_bus(f"{WITHHOLDING_TYPE_API}latest/"), SIGNED_IN),
    ),
    "api-event-publish-batch": (
        post("/api/topics/tax-policy/events/batch/", PUBLISHERS | {TOKEN}, {"events": [TAX_EVENT]}),
        post("/api/topics/irs.withholding/events/batch/", PUBLISHERS),
    ),
    "api-schema-versions": (
        get("/api/topics/tax-policy/types/tax_policy.updated/schemas/", CALLERS),
        get("/api/topics/irs.withholding/types/withholding_table.published/schemas/", SIGNED_IN),
        post("/api/topics/tax-policy/types/tax_policy.updated/schemas/", ADMINS),
    ),
    # The registry: reads and the check of a draft for whoever may view the topic; writes for bus admins.
    "api-event-types": (
        get("/api/topics/tax-policy/types/", CALLERS),
        get("/api/topics/irs.withholding/types/", SIGNED_IN),
        post("/api/topics/tax-policy/types/", ADMINS, {"name": "tax_policy.matrix"}),
    ),
    "api-versions": (
        get(f"{TAX_TYPE_API}versions/", CALLERS),
        get(f"{WITHHOLDING_TYPE_API}versions/", SIGNED_IN),
        post(f"{TAX_TYPE_API}versions/", ADMINS, {"schema": {"type": "object"}, "reason": "matrix"}),
    ),
    "api-version-check": (
        post(f"{TAX_TYPE_API}versions/check/", CALLERS, {"schema": {"type": "object"}}),
        post(f"{WITHHOLDING_TYPE_API}versions/check/", SIGNED_IN, {"schema": {"type": "object"}}),
    ),
    "api-version-detail": (
        get(f"{TAX_TYPE_API}versions/1/", CALLERS),
        get(f"{WITHHOLDING_TYPE_API}versions/1/", SIGNED_IN),
    ),
    "api-version-state": (
        post(f"{TAX_TYPE_API}versions/1/state/", ADMINS, {"state": "deprecated", "reason": "matrix"}),
    ),
    "api-event-type-compatibility": (
        post(f"{TAX_TYPE_API}compatibility/", ADMINS, {"mode": "FULL", "policy": "STRICT", "reason": "matrix"}),
    ),
    "api-event-list": (get("/api/events/", CALLERS),),
    "api-event-detail": (
        get("/api/events/{w.event.envelope_id}/", CALLERS),
        get("/api/events/{w.sensitive_event.envelope_id}/", SIGNED_IN, hidden_as_404=True),
    ),
    # Receipts are a service's word: only a token bound to a subscriber posts them (the world's is e-file's);
    # whoever may view the event's topic reads them.
    "api-event-receipts": (
        post("/api/events/{w.event.envelope_id}/receipts/", frozenset({TOKEN}), {"status": "applied"}),
        get("/api/events/{w.event.envelope_id}/receipts/", CALLERS),
        get("/api/events/{w.sensitive_event.envelope_id}/receipts/", SIGNED_IN, hidden_as_404=True),
    ),
    "api-receipts-batch": (
        post(
            "/api/receipts/",
            frozenset({TOKEN}),
            lambda w: {"receipts": [{"event": w.event.envelope_id, "status": "applied"}]},
        ),
    ),
    "api-dead-letter-list": (get("/api/dlq/", CALLERS),),
    "api-dead-letter-replay": (post("/api/dlq/{w.letter.pk}/replay/", ADMINS),),
    # Any other path under /api/: 404 in the error shape, whoever asks.
    "unnamed: api/^(?P<path>(?s:.*))$": (get("/api/no-such-endpoint/", EVERYONE, answers=404),),
}


@dataclass(frozen=True)
class SocketCase:
    """One websocket path and the roles that may connect to it."""

    path: str  # formatted with w (the World)
    allowed: frozenset[str]


SOCKET_RULES: dict[str, SocketCase] = {
    "ws/traffic/": SocketCase("/ws/traffic/", SIGNED_IN),
    "ws/dlq/": SocketCase("/ws/dlq/", SIGNED_IN),
    "ws/subscribers/": SocketCase("/ws/subscribers/", SIGNED_IN),
    # The live part of the bulk action page, which is a reading page.
    "ws/dlq/bulk/<int:action_id>/": SocketCase("/ws/dlq/bulk/{w.bulk.pk}/", SIGNED_IN),
}


def url_routes(patterns: list[Any], namespace: str = "", prefix: str = "") -> Iterator[str]:
    """The key of every route: its namespace-qualified name, its namespace's, or (unnamed) its full pattern."""
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            if pattern.namespace in WHOLE_NAMESPACES:
                yield f"{pattern.namespace}:"
                continue
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            yield from url_routes(pattern.url_patterns, inner, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield f"{namespace}{pattern.name}" if pattern.name else f"unnamed: {prefix}{pattern.pattern}"


def ordered(allowed: frozenset[str]) -> list[str]:
    """Every role, refused ones first, each group in the fixed order."""
    return [role for role in ROLES if role not in allowed] + [role for role in ROLES if role in allowed]


def client_for(world: World, role: str) -> Client:
    """A client as the role: no credentials, the service token (no session), or a person's session."""
    if role == ANONYMOUS:
        return Client(raise_request_exception=False)
    if role == TOKEN:
        return Client(raise_request_exception=False, HTTP_AUTHORIZATION=f"Bearer {world.token_text}")
    client = Client(raise_request_exception=False)
    client.force_login(User.objects.get(username=role))
    return client


def answer(world: World, case: Case, role: str, path: str) -> HttpResponseBase:
    """Make the case's request as the role."""
    client = client_for(world, role)
    if case.method == "GET":
        return client.get(path, REMOTE_ADDR=case.remote_addr)
    data = case.data(world) if callable(case.data) else case.data or {}
    if path.startswith("/api/"):
        return client.post(path, json.dumps(data), content_type="application/json", REMOTE_ADDR=case.remote_addr)
    return client.post(path, data, REMOTE_ADDR=case.remote_addr)


def described(response: HttpResponseBase, path: str) -> str:
    """The status, where a redirect goes, and the body of an API refusal that is not in the error shape."""
    location = response.headers.get("Location")
    text = f"{response.status_code} to {location}" if location else str(response.status_code)
    if path.startswith("/api/") and response.status_code >= 400 and not in_error_shape(response):
        body = response.content[:60] if isinstance(response, HttpResponse) else b"(streamed)"
        text += f" not in the error shape ({response.headers.get('Content-Type')}: {body!r})"
    return text


def sign_in_asked(response: HttpResponseBase) -> bool:
    """True for a redirect to a sign-in page that will send the person back (a refusal, not a sign-out)."""
    location = response.headers.get("Location", "")
    return response.status_code == 302 and location.startswith(("/accounts/login/?next=", "/admin/login/?next="))


def in_error_shape(response: HttpResponseBase) -> bool:
    """True when the body is the API's one error shape: ``{"errors": [{"path", "message"}, ...]}``."""
    if not isinstance(response, HttpResponse):  # a streamed download
        return False
    try:
        body = json.loads(response.content)
    except ValueError:
        return False
    errors = body.get("errors") if isinstance(body, dict) else None
    return (
        isinstance(errors, list)
        and bool(errors)
        and set(body) == {"errors"}
        and all(isinstance(error, dict) and {"path", "message"} <= set(error) for error in errors)
    )


def refusal_expected(case: Case, role: str, path: str) -> str:
    """How the rules say this role is refused here."""
    if case.refused_as is not None:
        return str(case.refused_as)
    denied = "403 or 404" if case.hidden_as_404 else "403"
    if path.startswith("/api/"):
        return "401 in the error shape" if role == ANONYMOUS else f"{denied} in the error shape"
    if path.startswith("/admin/"):
        return "302 to /admin/login/?next="
    return "302 to /accounts/login/?next=" if role in (ANONYMOUS, TOKEN) else denied


def refused_as_expected(case: Case, role: str, path: str, response: HttpResponseBase) -> bool:
    """True when the response is the refusal the rules expect."""
    status = response.status_code
    if case.refused_as is not None:
        return status == case.refused_as
    denied = {403, 404} if case.hidden_as_404 else {403}
    if path.startswith("/api/"):
        return status in ({401} if role == ANONYMOUS else denied) and in_error_shape(response)
    if path.startswith("/admin/"):
        return sign_in_asked(response) and response.headers["Location"].startswith("/admin/login/")
    if role in (ANONYMOUS, TOKEN):
        return sign_in_asked(response) and response.headers["Location"].startswith("/accounts/login/")
    return status in denied


def mismatch(case: Case, role: str, path: str, response: HttpResponseBase) -> str | None:
    """What is wrong with the answer, by the rules; None when it is as they say."""
    where = f"{case.method} {path} as {role}"
    status = response.status_code
    if status >= 500 and status != case.answers:
        return f"{where}: expected no server error, got {described(response, path)}"
    if case.answers is not None:
        if status == case.answers and (not path.startswith("/api/") or in_error_shape(response)):
            return None
        return f"{where}: expected {case.answers}, got {described(response, path)}"
    if role in case.allowed:
        if status in (401, 403, 404, 405) or sign_in_asked(response):
            return f"{where}: expected allowed, got {described(response, path)}"
        return None
    if refused_as_expected(case, role, path, response):
        return None
    return f"{where}: expected refused ({refusal_expected(case, role, path)}), got {described(response, path)}"


@pytest.fixture
def world(demo: None, bus: Any) -> World:
    """The demo data and the objects the cases name."""
    return world_build()


@pytest.fixture
def socket_world(demo_committed: None, bus: Any) -> World:
    """The same, committed: the websocket consumers read the database from other threads."""
    return world_build()


def test_every_route_has_a_rule_and_every_rule_a_route() -> None:
    """A new URL or websocket route without a rule fails here, and so does a rule for a route that is gone."""
    routes = set(url_routes(get_resolver().url_patterns))
    sockets = {str(pattern.pattern) for pattern in websocket_urlpatterns}

    assert sorted(routes - set(RULES)) == [], "routes without a rule: add them to RULES"
    assert sorted(set(RULES) - routes) == [], "rules for routes that no longer exist"
    assert sorted(sockets - set(SOCKET_RULES)) == [], "websocket routes without a rule: add them to SOCKET_RULES"
    assert sorted(set(SOCKET_RULES) - sockets) == [], "websocket rules for routes that no longer exist"


def test_the_route_walk_keys_nested_names_whole_namespaces_and_unnamed_patterns() -> None:
    """No kind of route slips past the rules: a name inside an include, a namespace, a pattern without a name."""

    def view(request: Any) -> HttpResponse:
        return HttpResponse()

    patterns = [
        url("a/", include([url("b/", view, name="b"), re_path(r"^c$", view)])),
        url("admin/", include(([url("x/", view, name="x")], "admin"))),
        url("ns/", include(([url("y/", view, name="y")], "ns"))),
    ]

    assert list(url_routes(patterns)) == ["b", "unnamed: a/^c$", "admin:", "ns:y"]


@pytest.mark.parametrize("route", sorted(RULES))
def test_each_role_is_allowed_or_refused_as_the_rules_say(route: str, world: World) -> None:
    """Every case of the route, for every role: refused ones first, then the allowed ones; no 5xx anywhere."""
    problems = []
    for case in RULES[route]:
        for role in ordered(case.allowed):
            path = case.path_for(world, role)
            response = answer(world, case, role, path)
            problems.append(mismatch(case, role, path, response))

    found = [problem for problem in problems if problem]
    assert found == [], "\n" + "\n".join(found)


async def socket_connected(path: str, world: World, role: str) -> tuple[bool, int | None]:
    """Open the websocket as the role (origin allowed; a session cookie, a bearer token, or nothing) and close it."""
    headers = [(b"host", b"testserver"), (b"origin", b"http://testserver")]
    if role == TOKEN:
        headers.append((b"authorization", f"Bearer {world.token_text}".encode()))
    elif role != ANONYMOUS:
        headers.append((b"cookie", await sync_to_async(session_cookie)(role)))
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect(timeout=5)
    await communicator.disconnect()
    return connected, code if isinstance(code, int) else None


@pytest.mark.parametrize("route", sorted(SOCKET_RULES))
async def test_each_role_may_open_a_websocket_as_the_rules_say(route: str, socket_world: World) -> None:
    """Signed-in people connect; a caller without a session (anonymous, or with only a token) is refused."""
    case = SOCKET_RULES[route]
    path = case.path.format(w=socket_world)
    problems = []
    for role in ordered(case.allowed):
        connected, code = await socket_connected(path, socket_world, role)
        if connected != (role in case.allowed):
            expected = "to connect" if role in case.allowed else "to be refused"
            problems.append(f"websocket {path} as {role}: expected {expected}, got connected={connected} code={code}")

    assert problems == [], "\n" + "\n".join(problems)
