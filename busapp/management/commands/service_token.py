"""``manage.py service_token``: issue, list and revoke service tokens (as /access/tokens/ does)."""

import datetime as dt
import getpass
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from busapp.actions.tokens import service_token_create, service_token_revoke
from busapp.errors import BusInputError
from busapp.models import ServiceToken, Subscriber, Topic


class Command(BaseCommand):
    """``create`` prints the token once; ``list`` shows tokens without secrets; ``revoke`` ends one for good."""

    help = "service_token create --service refund-feed --topic tax-policy | list | revoke <prefix>"

    def add_arguments(self, parser: CommandParser) -> None:
        """The three actions and their options."""
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser("create", help="issue a token; its text is printed this once")
        create.add_argument("--service", required=True, help="the service's name; it publishes as service:<name>")
        create.add_argument("--topic", action="append", required=True, help="a topic it may use (repeat for more)")
        create.add_argument("--no-publish", action="store_true", help="view only")
        create.add_argument("--no-view", action="store_true", help="publish only")
        create.add_argument("--subscriber", help="the subscriber whose receipts it posts (a registered name)")
        create.add_argument("--expires", type=dt.datetime.fromisoformat, help="UTC, like 2027-01-01T00:00+00:00")
        actions.add_parser("list", help="every token, without secrets")
        revoke = actions.add_parser("revoke", help="revoke a token for good")
        revoke.add_argument("prefix", help="the token's public part (hms_<prefix>_...)")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the chosen action; a refusal exits non-zero with its reason."""
        actor = f"cli:{getpass.getuser()}"
        try:
            if options["action"] == "create":
                self._create(options, actor)
            elif options["action"] == "revoke":
                token = service_token_revoke(prefix=options["prefix"], actor=actor)
                self.stdout.write(f"revoked {token}")
            else:
                self._list()
        except BusInputError as refused:
            raise CommandError("; ".join(f"{e['path'].lstrip('/')}: {e['message']}" for e in refused.errors)) from None
        except ValidationError as invalid:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in invalid.message_dict.items())) from None

    def _create(self, options: dict[str, Any], actor: str) -> None:
        """Issue the token and print its text (the only time anyone sees it)."""
        topics = list(Topic.objects.filter(name__in=options["topic"]))
        unknown = sorted(set(options["topic"]) - {topic.name for topic in topics})
        if unknown:
            raise CommandError(f"unknown topic {unknown[0]!r}")
        subscriber = None
        if options["subscriber"]:
            subscriber = Subscriber.objects.filter(name=options["subscriber"]).first()
            if subscriber is None:
                raise CommandError(f"no subscriber is registered as {options['subscriber']!r}: see /subscribers/")
        token, text = service_token_create(
            name=options["service"],
            topics=topics,
            actor=actor,
            can_publish=not options["no_publish"],
            can_view=not options["no_view"],
            expires_at=options["expires"],
            subscriber=subscriber,
        )
        self.stderr.write(f"issued {token}; copy the token now, it is not shown again:")
        self.stdout.write(text)

    def _list(self) -> None:
        """One line per token: service, prefix, topics, rights, expiry, last use, revoked."""
        for token in ServiceToken.objects.prefetch_related("topics"):
            rights = "+".join(r for r, held in (("publish", token.can_publish), ("view", token.can_view)) if held)
            topics = ",".join(topic.name for topic in token.topics.all())
            state = f"revoked {token.revoked_at:%Y-%m-%d %H:%M}" if token.revoked_at else "live"
            expires = f"{token.expires_at:%Y-%m-%d %H:%M}" if token.expires_at else "never"
            used = f"{token.last_used_at:%Y-%m-%d %H:%M}" if token.last_used_at else "never"
            self.stdout.write(
                f"{token.prefix}  {token.name}  {topics}  {rights}  expires {expires}  used {used}  {state}"
            )
