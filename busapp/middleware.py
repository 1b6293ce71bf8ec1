"""Addresses with NUL refused, refused writes audited (the CSP is django-csp's, set in settings)."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, JsonResponse

from busapp.actions.refusals import refusal_record, refusal_recorded
from busapp.models import AuditAction


class NulInAddressMiddleware:
    """Answers 400 to an address whose path or query holds a NUL character (PostgreSQL refuses it in any query).

    Form fields already refuse NUL (Django's CharField); this covers what views read from the
    address itself: ids in the path, filters in the query string.
    """

    MESSAGE = "the address holds a NUL character (%00): remove it"

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        """Refuse the request before any view sees it, or pass it on."""
        if "\x00" not in request.path and "%00" not in request.META.get("QUERY_STRING", ""):
            return self.get_response(request)
        if request.path.startswith("/api/"):
            return JsonResponse({"errors": [{"path": "", "message": self.MESSAGE}]}, status=400)
        return HttpResponse(self.MESSAGE, status=400, content_type="text/plain; charset=utf-8")


class RefusedWriteAuditMiddleware:
    """Writes every refused attempt to change something (a 403 to a signed-in person's POST) to the audit log.

    Views that refuse with their own audit entry (a publish, an approval, a replay) mark the
    request so it is written once; this catches the rest, the Django admin's included.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        """Pass the request on; audit it on the way back if it was a refused write."""
        response = self.get_response(request)
        user = getattr(request, "user", None)
        if (
            response.status_code == 403
            and request.method not in ("GET", "HEAD", "OPTIONS", "TRACE")
            and user is not None
            and user.is_authenticated
            and not refusal_recorded(request)
        ):
            refusal_record(
                request=request,
                actor=user if isinstance(user, User) else str(user),  # a service token's caller names itself
                action=AuditAction.WRITE_REFUSED,
                target=f"path:{request.path[:190]}",
            )
        return response
