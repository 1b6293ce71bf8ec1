"""Saved filters as actions: each kept or deleted filter is audited; a refused one writes nothing."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from busapp.actions.filters import saved_filter_create, saved_filter_delete
from busapp.errors import ActionRefusedError
from busapp.models import AuditAction, AuditEntry, SavedFilter

pytestmark = pytest.mark.usefixtures("demo")


def _person(name: str) -> User:
    return User.objects.get(username=name)


def test_keeping_and_deleting_a_filter_each_append_an_entry_naming_it() -> None:
    saved = saved_filter_create(owner=_person("auditor"), page="audit", name="  Exports  ", query="action=audit.")

    saved_filter_delete(owner=_person("auditor"), filter_id=saved.pk)

    entries = list(AuditEntry.objects.filter(target=f"saved_filter:{saved.pk}").order_by("seq"))
    assert [(entry.action, entry.actor_name) for entry in entries] == [
        (AuditAction.SAVED_FILTER_CREATE, "auditor"),
        (AuditAction.SAVED_FILTER_DELETE, "auditor"),
    ]
    assert entries[0].details == {"page": "audit", "name": "Exports", "query": "action=audit."}
    assert not SavedFilter.objects.exists()


@pytest.mark.parametrize(
    ("page", "name", "path"),
    [("events", "   ", "name"), ("nowhere", "Mine", "page"), ("events", "Taken", "name")],
)
def test_a_refused_filter_names_its_field_and_writes_nothing(page: str, name: str, path: str) -> None:
    saved_filter_create(owner=_person("policy"), page="events", name="Taken", query="topic=tax-policy")
    entries = AuditEntry.objects.count()

    with pytest.raises(ActionRefusedError) as refused:
        saved_filter_create(owner=_person("policy"), page=page, name=name, query="topic=irs.withholding")

    assert [error["path"] for error in refused.value.errors] == [path]
    assert SavedFilter.objects.count() == 1
    assert AuditEntry.objects.count() == entries


def test_nobody_deletes_another_persons_filter_and_the_attempt_changes_nothing() -> None:
    saved = saved_filter_create(owner=_person("policy"), page="events", name="Mine", query="topic=tax-policy")
    entries = AuditEntry.objects.count()

    with pytest.raises(SavedFilter.DoesNotExist):
        saved_filter_delete(owner=_person("admin"), filter_id=saved.pk)

    assert SavedFilter.objects.filter(pk=saved.pk).exists()
    assert AuditEntry.objects.count() == entries
