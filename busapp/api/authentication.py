"""Who calls the API (a service by its bearer token, or a signed-in person), and what they may do on a topic."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db.models import QuerySet
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.request import Request

from busapp.actions.tokens import service_token_authenticate
from busapp.audit import Actor
from busapp.errors import TokenInvalidError
from busapp.models import ServiceToken, Subscriber, Topic
from busapp.permissions import MANAGE_TOPIC, PUBLISH_TOPIC, VIEW_TOPIC, topic_right_held, topics_with_right


class ServiceCaller:
    """``request.user`` for a request made with a service token."""

    is_authenticated = True
    is_anonymous = False
    is_active = True

    def __init__(self, token: ServiceToken) -> None:
        self.token = token

    def __str__(self) -> str:
        return self.actor

    @property
    def actor(self) -> str:
        """The publisher name history and the audit log give the service: ``service:<name>``."""
        return self.token.actor


class ServiceTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer hms_<prefix>_<secret>``; any other Authorization scheme is left to the next class."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[ServiceCaller, ServiceToken] | None:
        """The token's service, or None when the request carries no bearer token."""
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, text = header.partition(" ")
        if scheme.lower() != self.keyword.lower():
            return None
        try:
            token = service_token_authenticate(text=text.strip())
        except TokenInvalidError as error:
            raise exceptions.AuthenticationFailed(str(error)) from None
        return ServiceCaller(token), token

    def authenticate_header(self, request: Request) -> str:
        """Makes refusals without credentials 401 (not 403) and names the scheme."""
        return f'{self.keyword} realm="api"'


class ServiceTokenScheme(OpenApiAuthenticationExtension):
    """Describes the bearer token in the OpenAPI document."""

    target_class = ServiceTokenAuthentication
    name = "serviceToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        """HTTP bearer, with the token's form."""
        return {"type": "http", "scheme": "bearer", "bearerFormat": "hms_<prefix>_<secret>"}


# Browsers use their session; DRF enforces CSRF on it (the API views are exempt from the middleware's check).
BrowserSessionAuthentication = SessionAuthentication


def caller(request: Request) -> User | ServiceCaller:
    """The service or the person making the request."""
    user = request.user
    return user if isinstance(user, ServiceCaller) else _person(request)


def caller_actor(request: Request) -> Actor:
    """Who the request acts as: the person, or ``service:<name>``."""
    user = request.user
    return user.actor if isinstance(user, ServiceCaller) else _person(request)


def caller_name(request: Request) -> str:
    """The caller's name, as history and idempotency keys record it."""
    actor = caller_actor(request)
    return actor if isinstance(actor, str) else actor.get_username()


def topic_for(request: Request, name: str, right: str) -> Topic:
    """The topic, if the caller holds ``right`` on it: 404 unknown, 403 refused (tokens hold only publish and view)."""
    # NUL is never in a topic's name, and PostgreSQL refuses it in a query.
    topic = None if "\x00" in name else Topic.objects.filter(name=name).first()
    if topic is None:
        raise exceptions.NotFound(f"unknown topic {name!r}")
    user = request.user
    subject = user.token if isinstance(user, ServiceCaller) else _person(request)
    who = f"token {subject}" if isinstance(subject, ServiceToken) else "you"
    if not topic_right_held(subject, right, topic):
        raise exceptions.PermissionDenied(f"{who} may not {_verb(right)} topic {name!r}: ask a bus admin for the right")
    return topic


def topics_for(request: Request) -> QuerySet[Topic]:
    """The topics the caller may see: a person's visible topics, or a viewing token's scope."""
    user = request.user
    return topics_with_right(user.token if isinstance(user, ServiceCaller) else _person(request), VIEW_TOPIC)


def topics_viewable(request: Request) -> QuerySet[Topic]:
    """The topics whose history the caller may read; 403 for a token issued without the view right."""
    user = request.user
    if isinstance(user, ServiceCaller) and not user.token.can_view:
        raise exceptions.PermissionDenied(
            f"token {user.token} may not view: it was issued to publish only; ask a bus admin for a token that views"
        )
    return topics_for(request)


def person_for(request: Request, action: str) -> User:
    """The signed-in person making the request; 403 for a service token, which may never ``action``."""
    user = request.user
    if isinstance(user, ServiceCaller):
        raise exceptions.PermissionDenied(
            f"service tokens may not {action}: a person with the right does it, signed in (token {user.token})"
        )
    return _person(request)


def receipts_poster(request: Request) -> tuple[ServiceToken, Subscriber]:
    """The service token posting receipts and its subscriber; 403 for a person, or a token bound to none."""
    user = request.user
    if not isinstance(user, ServiceCaller):
        raise exceptions.PermissionDenied(
            "receipts are a service's word: the service posts them with its token, bound to its subscriber; "
            "people read them (GET) instead"
        )
    subscriber = user.token.subscriber
    if subscriber is None:
        raise exceptions.PermissionDenied(
            f"token {user.token} is bound to no subscriber, so it posts no receipts: ask a bus admin to issue "
            "one with its Subscriber set (/access/tokens/)"
        )
    return user.token, subscriber


def person_with_permission(request: Request, permission: str, action: str) -> User:
    """The signed-in person, if their role grants the ``permission`` (like busapp.add_schemaversion); else 403."""
    person = person_for(request, action)
    if not person.has_perm(permission):
        raise exceptions.PermissionDenied(f"you may not {action}: it needs the {permission} permission (bus admins)")
    return person


def _person(request: Request) -> User:
    """The signed-in person making the request."""
    if not isinstance(request.user, User):  # IsAuthenticated stands before every caller
        raise exceptions.NotAuthenticated()
    return request.user


def _verb(right: str) -> str:
    """What a right lets one do, for messages."""
    return {PUBLISH_TOPIC: "publish to", VIEW_TOPIC: "view", MANAGE_TOPIC: "manage"}.get(right, right)
