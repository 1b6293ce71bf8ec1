"""/access/: grants with reasons and expiry, revokes, roles (never the last Bus admin), service tokens."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone

from busapp.actions.access import grant_create, grants_expire, role_member_set
from busapp.errors import ActionRefusedError
from busapp.models import AuditEntry, ServiceToken, Topic, TopicGroupGrant, TopicUserGrant
from busapp.permissions import MANAGE_TOPIC, PUBLISH_TOPIC, VIEW_TOPIC, Role, topic_right_held, topics_with_right
from busapp.selectors import grant_key
from tests.support import signed_in

pytestmark = pytest.mark.usefixtures("demo", "bus")


def _user(username: str) -> User:
    return User.objects.get(username=username)  # fresh: Django caches role permissions on the instance


def _topic(name: str = "tax-policy") -> Topic:
    return Topic.objects.get(name=name)


def _matrix_row(response: Any, principal: str) -> str:
    """The HTML of one person's or group's row of the access matrix."""
    page = response.content.decode()
    start = page.index(f'data-principal="{principal}"')
    return page[start : page.index("</tr>", start)]


def _pk(username: str) -> int:
    return _user(username).pk


def test_the_roles_exist_with_their_global_rights_after_migrate() -> None:
    """The data migration made the three groups; Bus admins may manage access, the others may not."""
    names = set(Group.objects.values_list("name", flat=True))
    assert {role.value for role in Role} <= names
    assert _user("admin").has_perm("busapp.manage_access")
    assert not _user("auditor").has_perm("busapp.manage_access")
    assert _user("auditor").has_perm("busapp.view_topic")
    assert not _user("auditor").has_perm("busapp.publish_topic")


def test_admin_grants_through_the_page_and_the_right_works_at_once() -> None:
    """A grant with a reason gives the right on the chosen topics, shows in the matrix and is audited."""
    assert not topic_right_held(_user("policy2"), MANAGE_TOPIC, _topic())
    response = signed_in("admin").post(
        "/access/grants/",
        {
            "principal": f"user:{_pk('policy2')}",
            "topics": ["tax-policy"],
            "rights": [MANAGE_TOPIC],
            "reason": "covers dead letters during the filing season",
        },
    )
    assert response.status_code == 302
    assert topic_right_held(_user("policy2"), MANAGE_TOPIC, _topic())
    assert not topic_right_held(_user("policy2"), MANAGE_TOPIC, _topic("irs.withholding"))
    entry = AuditEntry.objects.filter(action="access.grant", target="user:policy2").order_by("seq").last()
    assert entry is not None
    assert entry.actor_name == "admin"
    assert entry.details["rights"] == [MANAGE_TOPIC]
    assert entry.details["reason"] == "covers dead letters during the filing season"
    page = signed_in("admin").get("/access/").content.decode()
    assert "covers dead letters during the filing season" in page
    assert 'data-right="manage_topic"' in _matrix_row(signed_in("admin").get("/access/"), "user:policy2")


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"reason": ""}, "reason", "This field is required"),
        ({"expires_at": "2001-01-01T00:00"}, "expires_at", "has passed"),
        ({"rights": ["fly_topic"]}, "rights", "not one of the available choices"),
        ({"topics": []}, "topics", "This field is required"),
    ],
)
def test_a_grant_without_reason_or_with_a_past_expiry_is_refused_and_changes_nothing(
    change: dict[str, object], field: str, message: str
) -> None:
    """The form answers 400 with the problem under its field; no right is given, nothing is audited."""
    before = (TopicUserGrant.objects.count(), AuditEntry.objects.count())
    form = {"principal": f"user:{_pk('policy2')}", "topics": ["tax-policy"], "rights": [MANAGE_TOPIC], "reason": "x"}
    response = signed_in("admin").post("/access/grants/", {**form, **change})
    assert response.status_code == 400
    assert message in str(response.context["grant_form"].errors[field])
    assert (TopicUserGrant.objects.count(), AuditEntry.objects.count()) == before


def test_an_expired_grant_stops_working_at_its_expiry_before_any_sweep(time_machine: Any) -> None:
    """Checked where rights are checked: once the moment passes, the right is gone; the sweep then writes it down."""
    grant_create(
        principal=_user("policy2"),
        topics=[_topic()],
        rights=[MANAGE_TOPIC],
        reason="one afternoon's cover",
        actor=_user("admin"),
        expires_at=timezone.now() + dt.timedelta(seconds=1),
    )
    assert topic_right_held(_user("policy2"), MANAGE_TOPIC, _topic())
    time_machine.move_to(timezone.now() + dt.timedelta(seconds=2))
    assert not topic_right_held(_user("policy2"), MANAGE_TOPIC, _topic())
    assert TopicUserGrant.objects.filter(permission__codename=MANAGE_TOPIC).exists(), "not swept yet, yet not held"
    assert 'data-right="manage_topic"' not in _matrix_row(signed_in("admin").get("/access/"), "user:policy2")
    assert grants_expire() == 1
    entry = AuditEntry.objects.get(action="access.expire")
    assert entry.target == "user:policy2"
    assert entry.details["right"] == MANAGE_TOPIC
    assert entry.details["reason"] == "one afternoon's cover"
    assert grants_expire() == 0


def test_a_group_grant_reaches_every_member_and_expires_for_all(time_machine: Any) -> None:
    """A right given to a group is held by its members, and stops for all of them at its expiry."""
    topic = Topic.objects.create(name="payroll.rates")
    assert not topics_with_right(_user("policy"), VIEW_TOPIC).filter(pk=topic.pk).exists()
    grant_create(
        principal=Group.objects.get(name=Role.POLICY_PUBLISHERS.value),
        topics=[topic],
        rights=[VIEW_TOPIC, PUBLISH_TOPIC],
        reason="new topic for all policy staff",
        actor=_user("admin"),
        expires_at=timezone.now() + dt.timedelta(seconds=1),
    )
    for username in ("policy", "policy2"):
        assert topic_right_held(_user(username), PUBLISH_TOPIC, topic)
    assert not topic_right_held(_user("auditor"), PUBLISH_TOPIC, topic)
    time_machine.move_to(timezone.now() + dt.timedelta(seconds=2))
    assert not topic_right_held(_user("policy"), PUBLISH_TOPIC, topic)
    assert grants_expire() == 2
    assert not TopicGroupGrant.objects.exists()


def test_granting_again_renews_instead_of_doubling() -> None:
    """A right already held gets the new reason and expiry; it is still one grant."""
    for reason in ("first", "second"):
        grant_create(
            principal=_user("policy2"), topics=[_topic()], rights=[MANAGE_TOPIC], reason=reason, actor=_user("admin")
        )
    grants = TopicUserGrant.objects.filter(user__username="policy2", permission__codename=MANAGE_TOPIC)
    assert [grant.reason for grant in grants] == ["second"]
    renewal = AuditEntry.objects.filter(action="access.grant").order_by("seq").last()
    assert renewal is not None
    assert renewal.details["renewed"] == ["tax-policy:manage_topic"]


def test_revoke_through_the_page_needs_a_reason_and_takes_the_right_away() -> None:
    """Without a reason nothing is revoked; with one, the right is gone and the audit entry says why."""
    grant = TopicUserGrant.objects.get(
        user__username="policy2", content_object__name="tax-policy", permission__codename=PUBLISH_TOPIC
    )
    admin = signed_in("admin")
    refused = admin.post("/access/revoke/", {"grants": [grant_key(grant)], "reason": ""})
    assert refused.status_code == 400
    assert "reason" in refused.context["revoke_form"].errors
    assert topic_right_held(_user("policy2"), PUBLISH_TOPIC, _topic())
    done = admin.post("/access/revoke/", {"grants": [grant_key(grant)], "reason": "moved to another team"})
    assert done.status_code == 302
    assert not topic_right_held(_user("policy2"), PUBLISH_TOPIC, _topic())
    assert topic_right_held(_user("policy2"), VIEW_TOPIC, _topic()), "only the ticked grant goes"
    entry = AuditEntry.objects.get(action="access.revoke")
    assert entry.target == "user:policy2"
    assert entry.details == {
        "rights": ["tax-policy:publish_topic"],
        "reason": "moved to another team",
        "granted_reasons": ["demo data"],
    }
    published = signed_in("policy2").post(
        "/topics/tax-policy/publish/", {"type": "tax_policy.updated", "/payload/standard_deduction": "15000"}
    )
    assert published.status_code == 403


def test_the_last_bus_admin_cannot_be_removed() -> None:
    """Removing the only active Bus admin is refused; once there is another, it is allowed."""
    admin = signed_in("admin")
    form = {"username": "admin", "role": Role.BUS_ADMINS.value, "member": "0", "reason": "leaving"}
    refused = admin.post("/access/roles/", form)
    assert refused.status_code == 400
    assert "last active Bus admin" in str(refused.context["role_form"].errors)
    assert _user("admin").groups.filter(name=Role.BUS_ADMINS.value).exists()
    added = admin.post("/access/roles/", {**form, "username": "policy2", "member": "1", "reason": "deputy admin"})
    assert added.status_code == 302
    assert admin.post("/access/roles/", form).status_code == 302
    assert not _user("admin").groups.filter(name=Role.BUS_ADMINS.value).exists()
    with pytest.raises(ActionRefusedError, match="last active Bus admin"):
        role_member_set(user=_user("policy2"), role=Role.BUS_ADMINS, member=False, reason="x", actor="cli:test")
    actions = list(
        AuditEntry.objects.filter(action__startswith="role.").order_by("seq").values_list("action", "target")
    )
    assert actions == [("role.add", "user:policy2"), ("role.remove", "user:admin")]


def test_the_django_admin_site_cannot_remove_deactivate_or_delete_the_last_bus_admin() -> None:
    """A superuser editing people in /admin/ meets the same rule as /access/, and what they change is audited."""
    root = User.objects.create_superuser("root", password="x-unused-42")
    client = Client()
    client.force_login(root)
    admin = _user("admin")
    change = f"/admin/auth/user/{admin.pk}/change/"
    form = client.get(change).context["adminform"].form
    fields = {name: value for name, value in form.initial.items() if value is not None and name != "password"}
    fields["groups"] = [group.pk for group in admin.groups.all()]
    fields.update({"last_login_0": "", "last_login_1": "", "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00"})
    admin_group = Group.objects.get(name=Role.BUS_ADMINS.value).pk

    out_of_role = client.post(change, {**fields, "groups": [pk for pk in fields["groups"] if pk != admin_group]})
    deactivated = client.post(change, {**fields, "groups": fields["groups"], "is_active": ""})
    delete_page = client.get(f"/admin/auth/user/{admin.pk}/delete/")
    deleted = client.post(f"/admin/auth/user/{admin.pk}/delete/", {"post": "yes"})

    assert out_of_role.status_code == 200
    assert "admin is the last active Bus admin" in str(out_of_role.context["adminform"].form.errors)
    assert "admin is the last active Bus admin" in str(deactivated.context["adminform"].form.errors)
    assert "the last active Bus admin" in delete_page.content.decode()
    assert deleted.status_code == 200  # the refusal page again; nothing deleted
    admin.refresh_from_db()
    assert admin.is_active
    assert admin.groups.filter(name=Role.BUS_ADMINS.value).exists()
    # With a second Bus admin, the first may leave the role.
    role_member_set(user=_user("policy2"), role=Role.BUS_ADMINS, member=True, reason="deputy", actor="cli:test")
    assert (
        client.post(change, {**fields, "groups": [pk for pk in fields["groups"] if pk != admin_group]}).status_code
        == 302
    )
    assert not _user("admin").groups.filter(name=Role.BUS_ADMINS.value).exists()
    # Only the change that went through is in the audit log, with the person's roles after it.
    [entry] = AuditEntry.objects.filter(actor_name="root")
    assert (entry.action, entry.actor_name, entry.target) == ("user.change", "root", "user:admin")
    assert "Groups" in entry.details["changed"]
    assert Role.BUS_ADMINS.value not in entry.details["roles"]
    # Anyone else may be deleted there, and that is audited too.
    auditor = _user("auditor")
    assert client.post(f"/admin/auth/user/{auditor.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not User.objects.filter(username="auditor").exists()
    deletion = AuditEntry.objects.get(actor_name="root", action="user.delete")
    assert (deletion.target, deletion.details["roles"]) == ("user:auditor", [Role.AUDITORS.value])


@pytest.mark.parametrize("username", ["policy", "auditor"])
def test_only_bus_admins_reach_access_and_refused_writes_are_audited(username: str) -> None:
    """Policy staff and auditors get 403 on every /access/ page; their attempted grant is written down once."""
    client = signed_in(username)
    assert client.get("/access/").status_code == 403
    assert client.get("/access/tokens/").status_code == 403
    form = {"principal": f"user:{_pk(username)}", "topics": ["tax-policy"], "rights": [MANAGE_TOPIC], "reason": "me"}
    assert client.post("/access/grants/", form).status_code == 403
    assert not topic_right_held(_user(username), MANAGE_TOPIC, _topic())
    refused = AuditEntry.objects.filter(actor_name=username, action="access.refused", details__path="/access/grants/")
    assert refused.count() == 1


def test_a_token_issued_on_the_page_is_shown_once_works_and_stops_when_revoked() -> None:
    """The secret appears on the answer to the POST only; the API accepts it; revoked on the page, it is refused."""
    admin = signed_in("admin")
    response = admin.post(
        "/access/tokens/", {"name": "refund-feed", "topics": ["tax-policy"], "can_publish": "on", "can_view": "on"}
    )
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    secret = response.context["secret"]
    assert secret.startswith("hms_")
    assert secret in response.content.decode()
    token = ServiceToken.objects.get(name="refund-feed")
    assert secret not in admin.get("/access/tokens/").content.decode()
    assert token.secret_sha256 != secret
    assert secret not in json.dumps(list(ServiceToken.objects.values()), default=str)

    def publish() -> int:
        body = {"type": "tax_policy.updated", "payload": {"standard_deduction": 15000}}
        return (
            Client()
            .post(
                "/api/topics/tax-policy/events/",
                body,
                content_type="application/json",
                HTTP_AUTHORIZATION=f"Bearer {secret}",
            )
            .status_code
        )

    assert publish() in (201, 202)  # 202 here: this test's transaction never commits, so Redis waits
    token.refresh_from_db()
    assert token.last_used_at is not None
    assert "service:refund-feed" in AuditEntry.objects.filter(action="event.publish").values_list(
        "actor_name", flat=True
    )
    assert admin.post(f"/access/tokens/{token.prefix}/revoke/").status_code == 302
    assert publish() == 401


def test_a_token_form_with_a_bad_service_name_says_which_rule() -> None:
    """The service name's rule is shown under the field; no token is issued."""
    response = signed_in("admin").post(
        "/access/tokens/", {"name": "Refund Feed!", "topics": ["tax-policy"], "can_view": "on"}
    )
    assert response.status_code == 400
    assert response.context["form"].errors["name"]
    assert not ServiceToken.objects.exists()


def test_the_service_token_command_issues_lists_and_revokes() -> None:
    """The operator's way: the text is printed once, the list never shows it, a revoked token is refused."""
    out, err = io.StringIO(), io.StringIO()
    call_command("service_token", "create", "--service", "efile", "--topic", "tax-policy", stdout=out, stderr=err)
    text = out.getvalue().strip()
    assert text.startswith("hms_")
    assert "not shown again" in err.getvalue()
    token = ServiceToken.objects.get(name="efile")
    listed = io.StringIO()
    call_command("service_token", "list", stdout=listed)
    assert f"{token.prefix}  efile  tax-policy  publish+view" in listed.getvalue()
    assert text not in listed.getvalue()
    call_command("service_token", "revoke", token.prefix, stdout=io.StringIO())
    assert Client().get("/api/topics/", HTTP_AUTHORIZATION=f"Bearer {text}").status_code == 401
    with pytest.raises(CommandError, match="already revoked"):
        call_command("service_token", "revoke", token.prefix, stdout=io.StringIO())
    with pytest.raises(CommandError, match="unknown topic 'nope'"):
        call_command("service_token", "create", "--service", "efile", "--topic", "nope", stdout=io.StringIO())


def test_one_check_answers_for_service_tokens_too_scope_and_rights_both_counted() -> None:
    from busapp.actions.tokens import service_token_create

    admin = User.objects.get(username="admin")
    policy, withholding = Topic.objects.get(name="tax-policy"), Topic.objects.get(name="irs.withholding")
    publisher, _ = service_token_create(name="e-file", topics=[policy], actor=admin, can_publish=True, can_view=False)
    viewer, _ = service_token_create(name="analytics", topics=[policy], actor=admin, can_publish=False, can_view=True)

    assert topic_right_held(publisher, PUBLISH_TOPIC, policy)
    assert not topic_right_held(publisher, PUBLISH_TOPIC, withholding)  # outside its scope
    assert not topic_right_held(publisher, VIEW_TOPIC, policy)  # issued to publish only
    assert not topic_right_held(viewer, PUBLISH_TOPIC, policy)
    assert not topic_right_held(viewer, MANAGE_TOPIC, policy)  # a token never manages
    assert list(topics_with_right(viewer, VIEW_TOPIC)) == [policy]
    assert not topics_with_right(publisher, VIEW_TOPIC).exists()


def test_who_holds_a_right_on_a_topic_agrees_with_the_one_check_for_every_person() -> None:
    """The dead-letter page names who may fix a letter: the same people the per-topic check lets."""
    from busapp.permissions import people_holding

    admin = _user("admin")
    grant_create(principal=_user("policy2"), topics=[_topic()], rights=[MANAGE_TOPIC], reason="cover", actor=admin)
    publishers = Group.objects.get(name=Role.POLICY_PUBLISHERS.value)
    grant_create(principal=publishers, topics=[_topic()], rights=[PUBLISH_TOPIC], reason="team", actor=admin)
    gone = _user("auditor")
    gone.is_active = False
    gone.save()
    for topic in Topic.objects.all():
        for right in (VIEW_TOPIC, PUBLISH_TOPIC, MANAGE_TOPIC):
            holding = {person.username for person in people_holding(right, topic)}
            expected = {person.username for person in User.objects.all() if topic_right_held(person, right, topic)}
            assert holding == expected, (topic, right)
    assert "policy2" in {person.username for person in people_holding(MANAGE_TOPIC, _topic())}


def test_the_access_page_says_rights_and_holders_as_people_say_them() -> None:
    """Rights and holders in words: manage, never manage_topic; policy2 (person), never user:policy2."""
    admin = _user("admin")
    grant_create(principal=_user("policy2"), topics=[_topic()], rights=[MANAGE_TOPIC], reason="cover", actor=admin)

    page = signed_in("admin").get("/access/").content.decode()

    grants = page[page.index('id="grants"') :]
    rights = re.findall(r"<td>policy2 \(person\)</td><td>tax-policy</td><td>(\w+)</td>", grants)
    assert "manage" in rights
    assert "manage_topic" not in grants
    assert ">user:policy2<" not in page


def test_a_new_token_can_be_copied_and_each_grant_links_to_its_audit_entry() -> None:
    admin = signed_in("admin")
    grant_create(
        principal=_user("policy2"), topics=[_topic()], rights=[MANAGE_TOPIC], reason="cover", actor=_user("admin")
    )

    issued = admin.post("/access/tokens/", {"name": "efile", "topics": ["tax-policy"], "can_publish": "on"})
    access = admin.get("/access/").content.decode()

    page = issued.content.decode()
    assert 'data-copy="token-secret"' in page
    assert '<a href="/access/tokens/" aria-current="page">Service tokens</a>' in page  # in the navigation, current
    assert 'href="/audit/?action=access.grant&amp;target=user%3Apolicy2"' in access


def test_the_matrix_narrows_to_a_person_and_a_topic_and_a_chip_revokes_after_a_confirmation() -> None:
    admin = signed_in("admin")
    (grant,) = grant_create(
        principal=_user("policy2"), topics=[_topic()], rights=[MANAGE_TOPIC], reason="cover", actor=_user("admin")
    )

    narrowed = admin.get("/access/", {"who": "policy2", "topic": "tax-policy"}).content.decode()
    rows = re.findall(r'<tr data-principal="([^"]+)">', narrowed)
    columns = re.findall(r'<td class="rights" data-topic="([^"]+)">', narrowed)
    chip = re.search(
        r'<a class="chip-revoke" href="(/access/revoke/confirm/\?grants=[ug]\d+)" '
        r'aria-label="revoke manage on tax-policy from policy2 \(person\)"',
        narrowed,
    )
    assert rows == ["user:policy2"]
    assert set(columns) == {"tax-policy"}
    assert chip is not None

    confirm = admin.get(chip[1]).content.decode()
    assert re.search(r"<td>policy2 \(person\)</td><td>tax-policy</td><td>manage</td><td[^>]*>cover</td>", confirm)
    assert TopicUserGrant.objects.filter(pk=grant.pk).exists()  # a confirmation changes nothing
    key = re.search(r'<input type="hidden" name="grants" value="([ug]\d+)">', confirm)
    assert key is not None
    done = admin.post("/access/revoke/", {"grants": [key[1]], "reason": "cover ended"})
    assert done.status_code == 302
    assert not topic_right_held(_user("policy2"), MANAGE_TOPIC, _topic())
