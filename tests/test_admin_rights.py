"""The Django admin grants no rights: guardian's object-permission screens are gone, global permissions read-only."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from guardian.models import GroupObjectPermission, UserObjectPermission

from busapp.models import Topic, TopicGroupGrant, TopicUserGrant
from busapp.permissions import MANAGE_TOPIC, Role, topic_right_held

pytestmark = pytest.mark.usefixtures("demo", "bus")


def _root() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="x-unused-42"))
    return client


def _grant_rows() -> list[tuple[int, int, int]]:
    """Every per-topic grant, to a person or a group: (holder, topic, permission)."""
    people = TopicUserGrant.objects.values_list("user_id", "content_object_id", "permission_id")
    groups = TopicGroupGrant.objects.values_list("group_id", "content_object_id", "permission_id")
    return sorted([*people, *groups])


def test_the_object_permission_screens_of_a_topic_answer_404_and_grant_nothing() -> None:
    """Guardian's screens (and a bookmark of them) are gone: a superuser cannot give policy manage_topic there."""
    client = _root()
    topic = Topic.objects.get(name="tax-policy")
    policy = User.objects.get(username="policy")
    manage = Permission.objects.get(codename=MANAGE_TOPIC)
    auditors = Group.objects.get(name=Role.AUDITORS.value)
    before = _grant_rows()
    base = f"/admin/busapp/topic/{topic.pk}/permissions/"

    answers = [
        client.get(base),
        client.post(base, {"user": "policy", "submit_manage_user": "Manage user"}),
        client.get(f"{base}user-manage/{policy.pk}/"),
        client.post(f"{base}user-manage/{policy.pk}/", {"permissions": [MANAGE_TOPIC]}),
        client.post(f"{base}group-manage/{auditors.pk}/", {"permissions": [manage.pk]}),
    ]
    change_page = client.get(f"/admin/busapp/topic/{topic.pk}/change/").content.decode()

    assert [answer.status_code for answer in answers] == [404] * 5
    assert "permissions/" not in change_page  # no "Object permissions" link either
    assert _grant_rows() == before
    assert not topic_right_held(User.objects.get(username="policy"), MANAGE_TOPIC, topic)


def test_no_admin_page_edits_a_grant_or_guardian_s_own_permission_tables() -> None:
    """Neither the product's grant tables nor guardian's generic ones (nor Django's permissions) have an admin page."""
    for model in (TopicUserGrant, TopicGroupGrant, UserObjectPermission, GroupObjectPermission, Permission):
        assert not admin.site.is_registered(model), f"{model.__name__} has an admin page"


def test_a_person_s_and_a_group_s_global_permissions_are_read_only_in_the_admin() -> None:
    """A global right is that right on every topic: the admin shows them and changes none."""
    client = _root()
    policy = User.objects.get(username="policy")
    publishers = Group.objects.get(name=Role.POLICY_PUBLISHERS.value)
    manage = Permission.objects.get(codename=MANAGE_TOPIC)
    group_before = sorted(publishers.permissions.values_list("codename", flat=True))

    user_form = client.get(f"/admin/auth/user/{policy.pk}/change/").context["adminform"].form
    group_form = client.get(f"/admin/auth/group/{publishers.pk}/change/").context["adminform"].form
    posted = client.post(
        f"/admin/auth/group/{publishers.pk}/change/", {"name": publishers.name, "permissions": [manage.pk]}
    )

    assert "user_permissions" not in user_form.fields
    assert "permissions" not in group_form.fields
    assert posted.status_code == 302  # saved: its name, the only field the form has
    assert sorted(publishers.permissions.values_list("codename", flat=True)) == group_before
    assert not User.objects.get(username="policy").has_perm(f"busapp.{MANAGE_TOPIC}")


def test_only_superusers_are_shown_the_django_admin_and_it_is_named_the_advanced_site() -> None:
    """Bus admins and auditors do everything in the product: their top bar has no link to /admin/."""
    for username in ("admin", "auditor", "policy"):
        client = Client()
        client.force_login(User.objects.get(username=username))
        assert 'href="/admin/"' not in client.get("/").content.decode(), username

    assert '<a href="/admin/">Advanced (Django admin)</a>' in _root().get("/").content.decode()
