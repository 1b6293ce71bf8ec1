"""One error shape for every answer under /api/: ``{"errors": [{"path": "/payload/x", "message": "..."}]}``."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import set_rollback

from busapp.actions.receipts import ReceiptRefusal, ReceiptRefusedError
from busapp.actions.refusals import refusal_record
from busapp.api.authentication import ServiceCaller
from busapp.api.serializers import ErrorsSerializer
from busapp.errors import (
    ActionRefusedError,
    ApprovalRequiredError,
    BusInputError,
    CatchUpRefusedError,
    EventRejectedError,
    FieldError,
    HistoryQueryError,
    PayloadTooLargeError,
    RecordInvalidError,
    RightRefusedError,
    TopicNotFoundError,
    errors_joined,
)
from busapp.models import AuditAction

logger = logging.getLogger(__name__)

# What each refusal of the bus's own services answers with.
BUS_ERROR_STATUS: dict[type[BusInputError], int] = {
    TopicNotFoundError: status.HTTP_404_NOT_FOUND,
    ApprovalRequiredError: status.HTTP_403_FORBIDDEN,
    RightRefusedError: status.HTTP_403_FORBIDDEN,
    ActionRefusedError: status.HTTP_409_CONFLICT,
    EventRejectedError: status.HTTP_422_UNPROCESSABLE_ENTITY,
    RecordInvalidError: status.HTTP_422_UNPROCESSABLE_ENTITY,
    CatchUpRefusedError: status.HTTP_422_UNPROCESSABLE_ENTITY,
    PayloadTooLargeError: status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
}
# What each kind of refused receipt answers with (a field against its rule: 400, as the API's other body checks).
RECEIPT_REFUSAL_STATUS: dict[ReceiptRefusal, int] = {
    ReceiptRefusal.INVALID: status.HTTP_400_BAD_REQUEST,
    ReceiptRefusal.UNKNOWN_SUBSCRIBER: status.HTTP_404_NOT_FOUND,
    ReceiptRefusal.UNKNOWN_EVENT: status.HTTP_404_NOT_FOUND,
    ReceiptRefusal.NOT_FOLLOWED: status.HTTP_403_FORBIDDEN,
    ReceiptRefusal.OUT_OF_SCOPE: status.HTTP_403_FORBIDDEN,
    ReceiptRefusal.CONFLICT: status.HTTP_409_CONFLICT,
}


class ApiError(exceptions.APIException):
    """A refusal that already carries its errors as paths and messages."""

    def __init__(self, errors: list[FieldError], status_code: int) -> None:
        super().__init__(detail=errors_joined(errors))
        self.errors = errors
        self.status_code = status_code


def body_too_large(limit: int, size: int) -> ApiError:
    """413 for a body over ``limit`` bytes."""
    message = f"the body is {size} bytes; the limit is {limit} bytes: send IDs, not documents"
    return ApiError([{"path": "", "message": message}], status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)


def errors_response(errors: list[FieldError], status_code: int, headers: dict[str, str] | None = None) -> Response:
    """The one error answer."""
    return Response({"errors": errors}, status=status_code, headers=headers)


def detail_errors(detail: Any, path: str = "") -> list[FieldError]:
    """DRF's error detail (nested dicts and lists of messages) as paths and messages."""
    if isinstance(detail, dict):
        errors: list[FieldError] = []
        for key, value in detail.items():
            inner = path if key in ("non_field_errors", "detail") else f"{path}/{key}"
            errors += detail_errors(value, inner)
        return errors
    if isinstance(detail, list):
        if all(isinstance(item, str) for item in detail):
            return [{"path": path, "message": str(item)} for item in detail]
        return [error for index, item in enumerate(detail) for error in detail_errors(item, f"{path}/{index}")]
    return [{"path": path, "message": str(detail)}]


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """Answer every refusal, and any failure, in the one error shape (REST_FRAMEWORK's EXCEPTION_HANDLER)."""
    request: Request | None = context.get("request")
    headers: dict[str, str] = {}
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(*exc.args)
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)
    errors: list[FieldError]
    status_code: int
    if isinstance(exc, HistoryQueryError):  # a filter, condition or cursor of the query string
        errors = [{"path": f"/query/{error['path']}", "message": error["message"]} for error in exc.errors]
        status_code = status.HTTP_400_BAD_REQUEST
    elif isinstance(exc, ReceiptRefusedError):  # a batch's status is its first refused receipt's
        errors, status_code = exc.errors, RECEIPT_REFUSAL_STATUS[exc.refusal]
    elif isinstance(exc, BusInputError):
        errors, status_code = exc.errors, BUS_ERROR_STATUS.get(type(exc), status.HTTP_400_BAD_REQUEST)
    elif isinstance(exc, ApiError):
        errors, status_code = exc.errors, exc.status_code
    elif isinstance(exc, exceptions.APIException):
        errors, status_code = _framework_errors(exc, headers)
    elif isinstance(exc, OperationalError | InterfaceError):
        # The database went away mid-request (its session terminated, a failover): the transaction
        # did not commit, or its answer was lost. Retryable: the same Idempotency-Key accepts it once.
        logger.warning("API request lost its database connection: %s", exc)
        message = "the database connection was lost; send the request again (with the same Idempotency-Key)"
        errors, status_code = [{"path": "", "message": message}], status.HTTP_503_SERVICE_UNAVAILABLE
        headers["Retry-After"] = "1"
    else:
        logger.exception("API request failed", exc_info=exc)
        errors = [{"path": "", "message": "the server failed to answer; try again, and report it if it persists"}]
        status_code = status.HTTP_500_INTERNAL_SERVER_ERROR
    set_rollback()
    if status_code == status.HTTP_403_FORBIDDEN and request is not None:
        refusal_audit(request, errors, context.get("view"))
    return errors_response(errors, status_code, headers)


def _framework_errors(exc: exceptions.APIException, headers: dict[str, str]) -> tuple[list[FieldError], int]:
    """DRF's own refusals (parse, authentication, throttling ...) in the one shape; a challenge goes in ``headers``."""
    errors = detail_errors(exc.detail)
    if isinstance(exc, exceptions.ParseError):
        errors = [{"path": "", "message": f"the body is not valid JSON: {exc.detail}"}]
    auth_header = getattr(exc, "auth_header", None)
    if auth_header:
        headers["WWW-Authenticate"] = auth_header
    return errors, exc.status_code


def refusals(*codes: int) -> dict[int, OpenApiResponse]:
    """The error answers an operation documents, all in the one shape."""
    return {code: OpenApiResponse(ErrorsSerializer, description="refused: see errors") for code in codes}


def refusal_audit(request: Request, errors: list[FieldError], view: Any = None) -> None:
    """Write a refused write to the audit log, as the person or service that tried it.

    A view names the action and target of the entry (``refusal_action``, and ``refusal_target``
    filled from the URL's arguments); others are written as ``write.refused`` to their path.
    """
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    user = request.user
    if isinstance(user, ServiceCaller):
        actor: Any = user.actor
    elif user is not None and user.is_authenticated:
        actor = user
    else:
        return
    kwargs = (request.parser_context or {}).get("kwargs", {})
    refusal_record(
        request=request._request,
        actor=actor,
        action=getattr(view, "refusal_action", AuditAction.WRITE_REFUSED),
        target=getattr(view, "refusal_target", "path:{path}").format(**kwargs, path=request.path),
        reason=errors[0]["message"],
    )
