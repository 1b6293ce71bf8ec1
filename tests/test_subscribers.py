"""Subscribers: the seed's services in the demo data, registered and followed by bus admins, each change audited."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils.html import strip_tags

from busapp.actions.subscribers import subscriber_create, subscriber_follow, subscriber_unfollow
from busapp.errors import ActionRefusedError, RecordInvalidError, RightRefusedError
from busapp.models import AuditEntry, EventType, Subscriber, SubscriberFollow, Topic
from tests.support import signed_in

pytestmark = pytest.mark.usefixtures("demo")


def _text(response: Any) -> str:
    return " ".join(strip_tags(response.content.decode()).split())


def test_the_demo_data_holds_the_seeds_four_services_following_tax_policy() -> None:
    follows = {
        (follow.subscriber.name, follow.topic.name): follow.apply_deadline
        for follow in SubscriberFollow.objects.select_related("subscriber", "topic")
    }

    assert {name for name, topic in follows if topic == "tax-policy"} == {
        "e-file",
        "withholding-calculator",
        "mobile-tax-app",
        "analytics-dashboard",
    }
    assert follows[("withholding-calculator", "irs.withholding")] == 300
    assert follows[("e-file", "tax-policy")] == 60


def test_auditors_and_bus_admins_see_the_list_policy_staff_do_not() -> None:
    page = _text(signed_in("auditor").get("/subscribers/"))

    assert "mobile-tax-app" in page
    assert "tax-policy (every type): 60 s" in page
    assert "Register a subscriber" not in page  # auditors change nothing
    assert signed_in("policy").get("/subscribers/").status_code == 403


def test_a_bus_admin_registers_a_service_and_says_what_it_follows_each_step_audited() -> None:
    admin = signed_in("admin")
    kind = EventType.objects.get(name="tax_policy.updated")

    registered = admin.post("/subscribers/", {"name": "refund-service", "contact": "refunds@example.gov"})
    followed = admin.post(
        "/subscribers/follows/",
        {
            "subscriber": Subscriber.objects.get(name="refund-service").pk,
            "topic": "tax-policy",
            "event_types": [kind.pk],
            "apply_deadline": "120",
        },
    )
    stopped = admin.post("/subscribers/refund-service/follows/tax-policy/stop/")

    assert (registered.status_code, followed.status_code, stopped.status_code) == (302, 302, 302)
    entries = list(AuditEntry.objects.filter(target="subscriber:refund-service").order_by("seq"))
    assert [entry.action for entry in entries] == ["subscriber.create", "subscriber.follow", "subscriber.unfollow"]
    assert entries[1].details == {"topic": "tax-policy", "apply_deadline": 120, "event_types": ["tax_policy.updated"]}
    assert not SubscriberFollow.objects.filter(subscriber__name="refund-service").exists()


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("Refund Service", "3 to 64 lowercase letters"),
        ("e-file", "already exists"),
        ("x", "3 to 64 lowercase letters"),
    ],
)
def test_a_bad_or_taken_name_is_refused_at_its_field_and_nothing_is_saved(name: str, said: str) -> None:
    before = (Subscriber.objects.count(), AuditEntry.objects.count())

    response = signed_in("admin").post("/subscribers/", {"name": name})

    assert response.status_code == 400
    assert said in _text(response)
    assert (Subscriber.objects.count(), AuditEntry.objects.count()) == before


def test_the_deadline_and_the_types_are_checked_and_a_change_says_what_it_was() -> None:
    admin = User.objects.get(username="admin")
    efile = Subscriber.objects.get(name="e-file")
    tax = Topic.objects.get(name="tax-policy")
    other = EventType.objects.get(name="withholding_table.published")

    with pytest.raises(RecordInvalidError, match=r"withholding_table\.published not on topic tax-policy"):
        subscriber_follow(subscriber=efile, topic=tax, event_types=[other], actor=admin)
    with pytest.raises(RecordInvalidError, match="apply_deadline"):
        subscriber_follow(subscriber=efile, topic=tax, apply_deadline=0, actor=admin)
    with pytest.raises(ActionRefusedError, match="nothing to change"):
        subscriber_follow(subscriber=efile, topic=tax, apply_deadline=60, actor=admin)
    subscriber_follow(subscriber=efile, topic=tax, apply_deadline=30, actor=admin)

    entry = AuditEntry.objects.filter(action="subscriber.follow", actor_name="admin").get()
    assert entry.details["was"] == {"apply_deadline": 60, "event_types": "all"}


def test_only_bus_admins_change_subscribers_even_called_directly() -> None:
    auditor = User.objects.get(username="auditor")
    efile = Subscriber.objects.get(name="e-file")

    with pytest.raises(RightRefusedError):
        subscriber_create(name="sneaky-service", actor=auditor)
    with pytest.raises(RightRefusedError):
        subscriber_unfollow(subscriber=efile, topic=Topic.objects.get(name="tax-policy"), actor=auditor)
    response = signed_in("auditor").post("/subscribers/", {"name": "sneaky-service"})
    assert response.status_code == 403
    assert AuditEntry.objects.filter(action="manage.refused", actor_name="auditor").exists()
