"""``manage.py publish <topic> <type> '<payload json>'``: validate, record and publish one event."""

import getpass
import json
from typing import Any, NoReturn

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from busapp.actions.dead_letters import dead_letter_create
from busapp.actions.publishing import event_publish
from busapp.audit import Actor
from busapp.errors import BusInputError, EventRejectedError, FieldError
from busapp.models import EventStatus, Source, Topic
from busapp.permissions import PUBLISH_TOPIC, topic_right_held
from busapp.selectors import topic_get
from busapp.validation import NOT_JSON, json_parse, printable


class Command(BaseCommand):
    """Publish one event from the command line, as a named user or as the operator."""

    help = "Publish one event: publish tax-policy tax_policy.updated '{\"standard_deduction\": 15000}'"

    def add_arguments(self, parser: CommandParser) -> None:
        """Positional topic, type and payload; --user to publish as a dashboard user."""
        parser.add_argument("topic")
        parser.add_argument("type", help="event type, such as tax_policy.updated")
        parser.add_argument("payload", help="the payload as a JSON object")
        parser.add_argument("--user", help="publish as this user (needs publish_topic on the topic)")

    def handle(self, *args: Any, **options: Any) -> None:
        """Publish, or explain every reason it was refused and exit non-zero."""
        try:
            topic = topic_get(name=options["topic"])
        except BusInputError as error:
            raise CommandError(str(error.errors[0]["message"])) from None
        actor = self._actor(options["user"], topic)
        type_name, raw = options["type"], options["payload"]
        payload, errors = json_parse(raw, path="/payload")
        if errors and errors[0]["message"].startswith(NOT_JSON) and printable(raw) == raw:
            self._refuse(topic, {"type": type_name, "payload": raw}, actor, errors)
        if errors:  # nested over 64 levels, NUL, lone surrogates (bytes not UTF-8): nothing can keep it
            for problem in errors:
                self.stderr.write(f"{problem['path']}: {problem['message']}")
            raise CommandError(f"event refused ({len(errors)} error(s)); nothing was kept")
        if not isinstance(payload, dict):
            errors = [{"path": "/payload", "message": "must be a JSON object"}]
            self._refuse(topic, {"type": type_name, "payload": payload}, actor, errors)
        try:
            event = event_publish(
                topic=topic.name, event_type=type_name, payload=payload, actor=actor, source=Source.CLI
            )
        except EventRejectedError as error:
            self._refuse(topic, {"type": type_name, "payload": payload}, actor, error.errors)
        except BusInputError as error:
            raise CommandError(str(error)) from None
        if event.status == EventStatus.PUBLISHED:
            self.stdout.write(f"{event.envelope_id} published to {topic.name} (stream id {event.stream_id})")
        else:
            self.stdout.write(
                f"{event.envelope_id} pending: accepted and queued; {event.last_error or 'Redis did not answer'}. "
                "The bus worker publishes it when Redis is back."
            )

    def _actor(self, username: str | None, topic: Topic) -> Actor:
        """The user named by --user (who must hold publish_topic), or the operator's login name."""
        if not username:
            try:
                return f"cli:{getpass.getuser()}"
            except (KeyError, OSError):  # no login name (a container with an unnamed uid)
                return "cli:operator"
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"--user {username!r}: no active user by that name")
        if not topic_right_held(user, PUBLISH_TOPIC, topic):
            raise CommandError(f"--user {username!r} may not publish to {topic.name!r} (needs publish_topic)")
        return user

    def _refuse(self, topic: Topic, arrived: dict[str, Any], actor: Actor, errors: list[FieldError]) -> NoReturn:
        """Dead-letter the refused event, print each error on its own line, and exit non-zero."""
        raw = json.dumps(arrived, ensure_ascii=False)
        letter = dead_letter_create(topic=topic, raw=raw, errors=errors, source=Source.CLI, actor=actor)
        for error in errors:
            self.stderr.write(f"{error['path']}: {error['message']}")
        raise CommandError(
            f"event refused ({len(errors)} error(s)); kept as dead letter #{letter.pk} on {topic.dlq_channel}"
        )
