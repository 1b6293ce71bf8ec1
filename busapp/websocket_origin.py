"""The websocket origin check: the same rule Django's CSRF middleware applies to a POST's ``Origin``.

Channels' ``AllowedHostsOriginValidator`` compares only the origin's host with
``ALLOWED_HOSTS``, so a page at ``http://localhost:9999`` (another program on the same
machine) could open the dashboard's sockets with the signed-in person's cookie. Here an
origin is accepted only when it is, by scheme, host and port, the origin of the page that
served the socket (``ws`` is served by an ``http`` page, ``wss`` by an ``https`` one, the
host and port are the request's ``Host``), or is listed in ``CSRF_TRUSTED_ORIGINS`` (exactly,
or under a ``*.`` subdomain pattern there, as Django's CSRF check reads it).
"""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.utils.http import is_same_domain

# The page that opens a socket is served over the HTTP scheme its socket scheme pairs with.
_PAGE_SCHEME = {"ws": "http", "wss": "https"}


def _page_request(scope: dict[str, Any]) -> ASGIRequest:
    """The handshake read as Django reads a page's request (Host, ALLOWED_HOSTS, the proxy settings)."""
    page_scheme = _PAGE_SCHEME.get(scope.get("scheme") or "ws", "http")
    return ASGIRequest({**scope, "type": "http", "method": "GET", "scheme": page_scheme}, io.BytesIO())


def websocket_origin_allowed(scope: dict[str, Any]) -> bool:
    """Whether the handshake's ``Origin`` is the serving page's own (scheme, host, port) or a trusted one."""
    request = _page_request(scope)
    origin = request.META.get("HTTP_ORIGIN")
    if not origin:
        return False  # browsers always send it on a websocket handshake: no Origin, no browser page to trust
    try:
        host = request.get_host()
    except DisallowedHost:
        return False  # a Host the site does not serve: Django would answer such a page 400
    if origin == f"{'https' if request.is_secure() else 'http'}://{host}":
        return True
    trusted = settings.CSRF_TRUSTED_ORIGINS
    if origin in trusted:
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    return any(
        is_same_domain(parsed.netloc, pattern.netloc.lstrip("*"))
        for pattern in (urlsplit(entry) for entry in trusted if "*" in entry)
        if pattern.scheme == parsed.scheme
    )


class SameOriginValidator:
    """ASGI middleware: a websocket handshake from another origin is refused (403) before it reaches a consumer."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        """Pass the handshake on if its origin is allowed; otherwise deny it."""
        if scope["type"] != "websocket":
            raise ValueError("SameOriginValidator checks websocket handshakes only")
        if websocket_origin_allowed(scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
