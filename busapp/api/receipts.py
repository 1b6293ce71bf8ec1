"""Receipts over the API: a subscriber's service says what it did with an event; anyone who may view it reads them.

A receipt is posted with a service token bound to the subscriber (``ServiceToken.subscriber``);
people never post one. The checks and the write are the receipts action's.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from busapp.actions.receipts import ReceiptIn, ReceiptRefusedError, receipt_record, receipts_record
from busapp.api.authentication import receipts_poster, topics_viewable
from busapp.api.errors import ApiError, refusals
from busapp.api.parsers import StrictJSONParser
from busapp.api.selectors import event_receipts, event_record
from busapp.api.serializers import (
    EventReceiptListSerializer,
    ReceiptBatchInSerializer,
    ReceiptBatchResultSerializer,
    ReceiptInSerializer,
    ReceiptSerializer,
)
from busapp.api.views import body_checked, input_valid
from busapp.errors import FieldError
from busapp.models import AuditAction, ReceiptVia, ServiceToken, Subscriber

RECEIPT_REFUSALS = refusals(400, 401, 403, 404, 409, 413, 415)


def subscriber_named_checked(
    token: ServiceToken, subscriber: Subscriber, receipts: list[dict[str, Any]], path: str
) -> None:
    """403 at each receipt that names a subscriber other than the token's (``path`` formats with its index)."""
    errors: list[FieldError] = [
        {
            "path": path.format(index=index),
            "message": f"token {token} posts the receipts of {subscriber.name} only, not of {receipt['subscriber']!r}",
        }
        for index, receipt in enumerate(receipts)
        if receipt.get("subscriber", subscriber.name) != subscriber.name
    ]
    if errors:
        raise ApiError(errors, status.HTTP_403_FORBIDDEN)


def receipt_in(subscriber: Subscriber, event: Any, data: dict[str, Any]) -> ReceiptIn:
    """A receipt of the subscriber as it arrived now, for the action to check."""
    return ReceiptIn(subscriber.name, event, data["status"], data["detail"], timezone.now(), ReceiptVia.API)


def token_topic_names(token: ServiceToken) -> set[str]:
    """The only topics the token may use: its receipts too must be for events on them."""
    return set(token.topics.values_list("name", flat=True))


class EventReceiptsView(APIView):
    """POST /api/events/<envelope_id>/receipts/: the token's subscriber's receipt; GET: the event's receipts."""

    parser_classes = [StrictJSONParser]
    refusal_action, refusal_target = AuditAction.WRITE_REFUSED, "event:{envelope_id}"

    @extend_schema(
        operation_id="event_receipt_record",
        request=ReceiptInSerializer,
        responses={
            201: ReceiptSerializer,
            200: OpenApiResponse(ReceiptSerializer, description="the same receipt was recorded before: here it is"),
            **RECEIPT_REFUSALS,
        },
    )
    def post(self, request: Request, envelope_id: str) -> Response:
        """Record what the subscriber did with the event: 201 the first time, 200 the same again, 409 another."""
        body_checked(request, settings.BUS_MAX_PAYLOAD_BYTES)  # a detail of 4 KiB, even escaped, fits in it
        token, subscriber = receipts_poster(request)
        data = input_valid(ReceiptInSerializer, request)
        subscriber_named_checked(token, subscriber, [data], "/subscriber")
        outcome = receipt_record(
            receipt_in(subscriber, envelope_id, data), actor=token.actor, topics=token_topic_names(token)
        )
        answer = status.HTTP_201_CREATED if outcome.created else status.HTTP_200_OK
        return Response(ReceiptSerializer(outcome.receipt).data, status=answer)

    @extend_schema(
        operation_id="event_receipt_list",
        responses={200: EventReceiptListSerializer, **refusals(401, 403, 404)},
    )
    def get(self, request: Request, envelope_id: str) -> Response:
        """The event's receipts, if it is on a topic the caller may see: an unknown id and a hidden one are both 404."""
        event = event_record(envelope_id=envelope_id, topics=topics_viewable(request))
        if event is None:
            raise exceptions.NotFound(f"no event {envelope_id!r} in the history you may see")
        body = {"event": event.envelope_id, "receipts": event_receipts(event)}
        return Response(EventReceiptListSerializer(body).data)


class ReceiptsBatchView(APIView):
    """POST /api/receipts/: up to 1,000 receipts of the token's subscriber, all recorded or none."""

    parser_classes = [StrictJSONParser]
    json_levels_around = 3  # the body, its receipts and each receipt
    refusal_action, refusal_target = AuditAction.WRITE_REFUSED, "path:{path}"

    @extend_schema(
        operation_id="receipts_record_batch",
        request=ReceiptBatchInSerializer,
        responses={200: ReceiptBatchResultSerializer, **RECEIPT_REFUSALS},
    )
    def post(self, request: Request) -> Response:
        """Record every receipt, or refuse them all naming each bad one (the status is the first refusal's)."""
        body_checked(request, settings.DATA_UPLOAD_MAX_MEMORY_SIZE or settings.BUS_MAX_PAYLOAD_BYTES)
        token, subscriber = receipts_poster(request)
        items = input_valid(ReceiptBatchInSerializer, request)["receipts"]
        subscriber_named_checked(token, subscriber, items, "/receipts/{index}/subscriber")
        receipts = [receipt_in(subscriber, item["event"], item) for item in items]
        try:
            outcomes = receipts_record(receipts, actor=token.actor, whole=True, topics=token_topic_names(token))
        except ReceiptRefusedError as refused:  # its paths are /<index>/<field>: in this body, under receipts
            moved: list[FieldError] = [
                {"path": f"/receipts{error['path']}", "message": error["message"]} for error in refused.errors
            ]
            raise ReceiptRefusedError(moved, refused.refusal) from None
        created = sum(outcome.created for outcome in outcomes)
        body = {"results": outcomes, "created": created, "repeated": len(outcomes) - created}
        return Response(ReceiptBatchResultSerializer(body).data)
