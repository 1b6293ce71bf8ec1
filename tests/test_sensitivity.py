"""A topic's sensitive flag is four-eyes: one bus admin asks, a second approves, and only then it changes."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.test import Client

from busapp.actions.publishing import event_publish
from busapp.actions.sensitivity import topic_sensitivity_decide, topic_sensitivity_request
from busapp.errors import ActionRefusedError, ApprovalRequiredError, RightRefusedError
from busapp.models import AuditEntry, ImmutableRecordError, Source, Topic, TopicSensitivityChange
from busapp.permissions import Role
from tests.conftest import DEMO_PASSWORD
from tests.support import WITHHOLDING_TABLE

pytestmark = pytest.mark.usefixtures("demo", "bus")
WITHHOLDING = "irs.withholding"


def _person(username: str) -> User:
    return User.objects.get(username=username)  # fresh: Django caches permissions on the instance


@pytest.fixture
def admin2() -> User:
    """A second bus admin."""
    person = User.objects.create_user("admin2", password=DEMO_PASSWORD, is_staff=True)
    person.groups.add(Group.objects.get(name=Role.BUS_ADMINS.value))
    return _person("admin2")


def _client(username: str) -> Client:
    client = Client()
    client.force_login(_person(username))
    return client


def _sensitive(name: str = WITHHOLDING) -> bool:
    return Topic.objects.get(name=name).sensitive


def _actions(name: str = WITHHOLDING) -> list[tuple[str, str]]:
    """The topic's audit entries about its flag, oldest first: (action, actor)."""
    entries = AuditEntry.objects.filter(target=f"topic:{name}", action__startswith="topic.").exclude(
        action="topic.create"
    )
    return list(entries.order_by("seq").values_list("action", "actor_name"))


def test_the_flag_changes_only_when_a_second_bus_admin_approves_and_each_step_is_audited(admin2: User) -> None:
    """Admin asks to make irs.withholding not sensitive; nothing changes, and a lone publish is still refused."""
    change = topic_sensitivity_request(
        topic=Topic.objects.get(name=WITHHOLDING), sensitive=False, reason="pilot ended", actor=_person("admin")
    )

    assert _sensitive()
    with pytest.raises(ApprovalRequiredError):  # the door the issue names: untick, publish alone, tick again
        event_publish(
            topic=WITHHOLDING,
            event_type="withholding_table.published",
            payload=WITHHOLDING_TABLE,
            actor=_person("admin"),
            source=Source.FORM,
        )

    topic_sensitivity_decide(change_id=change.pk, actor=admin2, approve=True, reason="agreed in the CAB")

    assert not _sensitive()
    assert _actions() == [
        ("topic.sensitivity_request", "admin"),
        ("topic.sensitivity_approve", "admin2"),
        ("topic.update", "admin2"),
    ]
    update = AuditEntry.objects.get(target=f"topic:{WITHHOLDING}", action="topic.update")
    assert update.details == {
        "sensitive": False,
        "was": True,
        "change": change.pk,
        "requested_by": "admin",
        "approved_by": "admin2",
    }
    request_entry = AuditEntry.objects.get(action="topic.sensitivity_request")
    assert request_entry.details["reason"] == "pilot ended"


def test_the_requester_cannot_approve_or_reject_their_own_request(admin2: User) -> None:
    """Refused in the service, and on the page (a 403 written to the audit log); the flag stays."""
    change = topic_sensitivity_request(
        topic=Topic.objects.get(name=WITHHOLDING), sensitive=False, reason="pilot ended", actor=_person("admin")
    )

    with pytest.raises(RightRefusedError, match="their own request"):
        topic_sensitivity_decide(change_id=change.pk, actor=_person("admin"), approve=True, reason="me")
    page = _client("admin").post(
        f"/topics/{WITHHOLDING}/sensitivity/{change.pk}/decide/", {"decision": "approve", "reason": "me"}
    )

    assert page.status_code == 403
    assert _sensitive()
    assert TopicSensitivityChange.objects.get().is_open
    refusal = AuditEntry.objects.get(action="approval.refused")
    assert (refusal.actor_name, refusal.target, refusal.details["change"]) == (
        "admin",
        f"topic:{WITHHOLDING}",
        str(change.pk),
    )


def test_a_rejected_request_changes_nothing_and_a_decided_one_cannot_be_decided_again(admin2: User) -> None:
    """Rejected with a reason: audited, flag unchanged; approving it afterwards is refused."""
    change = topic_sensitivity_request(
        topic=Topic.objects.get(name="tax-policy"), sensitive=True, reason="numbers leak", actor=_person("admin")
    )
    topic_sensitivity_decide(change_id=change.pk, actor=admin2, approve=False, reason="not needed")

    with pytest.raises(ActionRefusedError, match="already rejected"):
        topic_sensitivity_decide(change_id=change.pk, actor=admin2, approve=True, reason="changed my mind")
    assert not _sensitive("tax-policy")
    assert _actions("tax-policy") == [("topic.sensitivity_request", "admin"), ("topic.sensitivity_reject", "admin2")]


def test_only_bus_admins_ask_or_decide_and_every_step_needs_a_reason(admin2: User) -> None:
    """policy2 (an approver of publishes) may not decide this; an empty reason, a second open request are refused."""
    topic = Topic.objects.get(name=WITHHOLDING)
    with pytest.raises(ActionRefusedError, match="not a bus admin"):
        topic_sensitivity_request(topic=topic, sensitive=False, reason="x", actor=_person("policy2"))
    with pytest.raises(ActionRefusedError, match="is required"):
        topic_sensitivity_request(topic=topic, sensitive=False, reason="  ", actor=_person("admin"))
    with pytest.raises(ActionRefusedError, match="already sensitive"):
        topic_sensitivity_request(topic=topic, sensitive=True, reason="x", actor=_person("admin"))
    change = topic_sensitivity_request(topic=topic, sensitive=False, reason="x", actor=_person("admin"))
    with pytest.raises(ActionRefusedError, match=f"change #{change.pk} is already waiting"):
        topic_sensitivity_request(topic=topic, sensitive=False, reason="again", actor=admin2)
    with pytest.raises(ActionRefusedError, match="not a bus admin"):
        topic_sensitivity_decide(change_id=change.pk, actor=_person("policy2"), approve=True, reason="ok")
    with pytest.raises(ActionRefusedError, match="is required"):
        topic_sensitivity_decide(change_id=change.pk, actor=admin2, approve=True, reason="")

    assert _client("policy2").get(f"/topics/{WITHHOLDING}/sensitivity/").status_code == 403
    assert (
        _client("policy2").post(f"/topics/{WITHHOLDING}/sensitivity/", {"sensitive": "no", "reason": "x"}).status_code
        == 403
    )
    assert AuditEntry.objects.filter(action="topic.sensitivity_refused", actor_name="policy2").count() == 1
    assert _sensitive()


def test_two_bus_admins_change_it_through_the_pages(admin2: User) -> None:
    """Admin asks on the topic's page, admin2 sees the request with its reason and approves it."""
    admin_client, second = _client("admin"), _client("admin2")
    assert "Request a change" in admin_client.get(f"/topics/{WITHHOLDING}/").content.decode()

    asked = admin_client.post(f"/topics/{WITHHOLDING}/sensitivity/", {"sensitive": "no", "reason": "pilot ended"})
    own_page = admin_client.get(f"/topics/{WITHHOLDING}/sensitivity/").content.decode()
    their_page = second.get(f"/topics/{WITHHOLDING}/sensitivity/").content.decode()
    their_topic_page = second.get(f"/topics/{WITHHOLDING}/").content.decode()
    still = _sensitive()
    change = TopicSensitivityChange.objects.get()
    approved = second.post(
        f"/topics/{WITHHOLDING}/sensitivity/{change.pk}/decide/", {"decision": "approve", "reason": "agreed"}
    )

    assert asked.status_code == 302
    assert still
    assert "You cannot approve or reject your own request" in own_page
    assert 'id="approve"' not in own_page
    assert 'id="approve"' in their_page
    assert "pilot ended" in their_page
    assert "admin asks to make it not sensitive: waiting for a second bus admin" in their_topic_page
    assert approved.status_code == 302
    assert not _sensitive()
    assert "is not sensitive" in second.get(f"/topics/{WITHHOLDING}/sensitivity/").content.decode()


def test_the_requester_may_withdraw_a_request_nobody_decided() -> None:
    """Cancelled: audited, nothing changes, and a new request may be made."""
    client = _client("admin")
    client.post(f"/topics/{WITHHOLDING}/sensitivity/", {"sensitive": "no", "reason": "pilot ended"})
    change = TopicSensitivityChange.objects.get()

    assert client.post(f"/topics/{WITHHOLDING}/sensitivity/{change.pk}/cancel/").status_code == 302
    assert _sensitive()
    assert _actions()[-1] == ("topic.sensitivity_cancel", "admin")
    assert client.post(f"/topics/{WITHHOLDING}/sensitivity/", {"sensitive": "no", "reason": "again"}).status_code == 302


def test_the_admin_site_shows_the_flag_read_only_and_no_save_can_flip_it() -> None:
    """A superuser's change form has no sensitive field; posting one changes nothing; Topic.save refuses a flip."""
    root = User.objects.create_superuser("root", password="x-unused-42")
    client = Client()
    client.force_login(root)
    topic = Topic.objects.get(name=WITHHOLDING)
    change = f"/admin/busapp/topic/{topic.pk}/change/"

    form = client.get(change).context["adminform"].form
    posted = client.post(change, {"description": "edited", "stream_retention": "100", "sensitive": ""})

    assert "sensitive" not in form.fields
    assert posted.status_code == 302
    topic.refresh_from_db()
    assert (topic.description, topic.sensitive) == ("edited", True)
    topic.sensitive = False
    with pytest.raises(ImmutableRecordError, match="second bus admin"):
        topic.save()
    with pytest.raises(ImmutableRecordError):
        topic.save(update_fields=["sensitive"])
    assert _sensitive()


def test_load_demo_again_leaves_an_approved_flag_as_it_is(admin2: User) -> None:
    """The commands create topics with their flag; they never change it on an existing topic."""
    change = topic_sensitivity_request(
        topic=Topic.objects.get(name=WITHHOLDING), sensitive=False, reason="pilot ended", actor=_person("admin")
    )
    topic_sensitivity_decide(change_id=change.pk, actor=admin2, approve=True, reason="agreed")

    call_command("load_demo", password=DEMO_PASSWORD, stdout=io.StringIO())

    assert not _sensitive()
