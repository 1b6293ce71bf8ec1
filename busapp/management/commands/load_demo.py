"""``manage.py load_demo``: the seed's story (topic tax-policy, its schema) and a user of each role."""

import secrets
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from busapp.actions.access import grant_create, user_create, user_password_set
from busapp.actions.registry import roles_ensure, topic_create
from busapp.actions.subscribers import subscriber_create, subscriber_follow
from busapp.models import Subscriber, Topic
from busapp.permissions import APPROVE_TOPIC, PUBLISH_TOPIC, VIEW_TOPIC, Role

ACTOR = "cli:load_demo"
TOPICS = [
    ("tax-policy", "Tax policy numbers every service must agree on, such as the standard deduction.", False),
    ("irs.withholding", "Federal withholding tables. Sensitive: a second person approves each publish.", True),
]
# The seed's subscribing services: name, what it does, the topics it follows with their apply deadlines (seconds).
SUBSCRIBERS = [
    ("e-file", "The e-file service: computes returns with the numbers in force.", {"tax-policy": 60}),
    (
        "withholding-calculator",
        "Employers' withholding calculator.",
        {"tax-policy": 60, "irs.withholding": 300},
    ),
    ("mobile-tax-app", "The citizens' mobile tax app.", {"tax-policy": 60}),
    ("analytics-dashboard", "Analytics: charts the numbers in force.", {"tax-policy": 300}),
]
# username, role, staff (may open the Django admin)
USERS = [
    ("policy", Role.POLICY_PUBLISHERS, False),
    ("policy2", Role.POLICY_PUBLISHERS, False),
    ("auditor", Role.AUDITORS, True),
    ("admin", Role.BUS_ADMINS, True),
]


class Command(BaseCommand):
    """Load the demo data; safe to run again (it only adds what is missing)."""

    help = "Load the seed's topics and schemas and the users policy, policy2, auditor and admin."

    def add_arguments(self, parser: CommandParser) -> None:
        """--password sets every demo user's password; without it new users get a random one."""
        parser.add_argument("--password", help="password for all demo users (default: random, printed once)")

    def handle(self, *args: Any, **options: Any) -> None:
        """Create roles, topics, schemas and users, then print the logins."""
        roles_ensure()
        with transaction.atomic():
            for name, description, sensitive in TOPICS:
                if not Topic.objects.filter(name=name).exists():
                    topic_create(name=name, description=description, sensitive=sensitive, actor=ACTOR)
        call_command("sync_schemas", settings.BASE_DIR / "schemas", actor=ACTOR, stdout=self.stdout)
        self._subscribers()
        password = options["password"] or secrets.token_urlsafe(12)
        created: list[str] = []
        reset: list[str] = []
        with transaction.atomic():
            for username, role, staff in USERS:
                user, is_new = self._user(username, role, staff, password)
                if is_new:
                    created.append(username)
                elif options["password"]:
                    user_password_set(user=user, password=password, actor=ACTOR)
                    reset.append(username)
        for username in created:
            self.stdout.write(f"created user {username}")
        if created or reset:
            self.stdout.write(f"demo password for {', '.join(created + reset)}: {password}")
        else:
            self.stdout.write("demo users exist; passwords unchanged (pass --password to reset them)")

    @transaction.atomic
    def _subscribers(self) -> None:
        """The seed's four services and what they follow (those not registered yet)."""
        for name, description, follows in SUBSCRIBERS:
            if Subscriber.objects.filter(name=name).exists():
                continue
            subscriber = subscriber_create(name=name, description=description, actor=ACTOR)
            for topic, deadline in follows.items():
                subscriber_follow(
                    subscriber=subscriber, topic=Topic.objects.get(name=topic), apply_deadline=deadline, actor=ACTOR
                )

    def _user(self, username: str, role: Role, staff: bool, password: str) -> tuple[Any, bool]:
        """Create a demo user in its role group with its per-topic rights, auditing each grant."""
        user, is_new = user_create(username=username, role=role, staff=staff, password=password, actor=ACTOR)
        if not is_new:
            return user, False
        if role == Role.POLICY_PUBLISHERS:
            for topic in Topic.objects.filter(name__in=[name for name, _, _ in TOPICS]):
                rights = [VIEW_TOPIC, PUBLISH_TOPIC] + ([APPROVE_TOPIC] if topic.sensitive else [])
                grant_create(principal=user, topics=[topic], rights=rights, reason="demo data", actor=ACTOR)
        return user, True
