"""Dead letters over the API: the open ones, a page at a time, and a replay of one (fixed or as it arrived)."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from busapp.actions.dead_letters import dead_letter_contents, dead_letter_replay
from busapp.api.authentication import person_for, topic_for, topics_for, topics_viewable
from busapp.api.errors import ApiError, refusals
from busapp.api.parsers import StrictJSONParser
from busapp.api.selectors import dead_letters_open_page
from busapp.api.serializers import (
    DeadLetterPageSerializer,
    DeadLetterQuerySerializer,
    ReplayedSerializer,
    ReplayInSerializer,
)
from busapp.api.views import body_checked, input_valid, published_answer, query_valid
from busapp.errors import FieldError
from busapp.models import AuditAction, DeadLetter
from busapp.permissions import MANAGE_TOPIC


class DeadLetterListView(APIView):
    """GET /api/dlq/: open dead letters on the topics the caller may see, newest first."""

    @extend_schema(
        operation_id="dead_letter_list",
        parameters=[DeadLetterQuerySerializer],
        responses={200: DeadLetterPageSerializer, **refusals(400, 401, 403)},
    )
    def get(self, request: Request) -> Response:
        """A page of open dead letters, of one topic or all; a topic the caller may not see is 400."""
        topics = topics_viewable(request)
        query = query_valid(DeadLetterQuerySerializer, request)
        topic = query.get("topic")
        if topic and not topics.filter(name=topic).exists():
            message = f"{topic!r} is not a topic you may see: leave it out to list every one you may"
            raise ApiError([{"path": "/query/topic", "message": message}], status.HTTP_400_BAD_REQUEST)
        page = dead_letters_open_page(topics, topic=topic, cursor=query.get("cursor"), size=query["limit"])
        return Response(DeadLetterPageSerializer(page).data)


class DeadLetterReplayView(APIView):
    """POST /api/dlq/<letter_id>/replay/: publish a dead letter (fixed, or as it arrived) to its topic."""

    parser_classes = [StrictJSONParser]
    refusal_action, refusal_target = AuditAction.DEAD_LETTER_REPLAY_REFUSED, "dead_letter:{letter_id}"

    @extend_schema(
        operation_id="dead_letter_replay",
        request=ReplayInSerializer,
        responses={
            201: ReplayedSerializer,
            202: OpenApiResponse(ReplayedSerializer, description="accepted while Redis is down: pending"),
            **refusals(400, 401, 403, 404, 409, 413, 415, 422),
        },
    )
    def post(self, request: Request, letter_id: int) -> Response:
        """Replay as a new event (people with the manage right); a payload that still fails is 422, the letter open."""
        body_checked(request, settings.BUS_MAX_PAYLOAD_BYTES)
        person = person_for(request, "replay dead letters")
        letter = DeadLetter.objects.select_related("topic").filter(pk=letter_id, topic__in=topics_for(request)).first()
        if letter is None:  # unknown, or on a topic the person may not see: the same answer
            raise exceptions.NotFound(f"no dead letter #{letter_id} on the topics you may see")
        topic_for(request, letter.topic.name, MANAGE_TOPIC)
        data = input_valid(ReplayInSerializer, request)
        arrived_type, arrived_payload = dead_letter_contents(letter)
        event_type, payload = data.get("type", arrived_type), data.get("payload", arrived_payload)
        if event_type is None or payload is None:
            missing: list[FieldError] = [
                {"path": f"/{name}", "message": f"dead letter #{letter.pk} carries no {what}: send one in the body"}
                for name, what, value in (
                    ("type", "event type", event_type),
                    ("payload", "JSON object payload", payload),
                )
                if value is None
            ]
            raise ApiError(missing, status.HTTP_422_UNPROCESSABLE_ENTITY)
        event = dead_letter_replay(letter_id=letter.pk, event_type=event_type, payload=payload, actor=person)
        answer = published_answer(event)
        return Response({**answer.body, "dead_letter": letter.pk}, status=answer.status)
