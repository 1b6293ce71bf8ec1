"""Saved filters: a person's named queries of the history or the audit log, kept and deleted, each audited."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.http import QueryDict

from busapp.audit import audit_record
from busapp.errors import ActionRefusedError
from busapp.models import AuditAction, SavedFilter, SavedFilterPage

NAME_MOST = 100
QUERY_MOST = 4000


def saved_filter_query(raw: str) -> str:
    """A posted query string as it is kept: re-encoded, so it is a plain query string whatever was posted."""
    return QueryDict(raw[:QUERY_MOST]).urlencode()


def saved_filter_create(*, owner: User, page: str, name: str, query: str) -> SavedFilter:
    """Keep ``query`` as the owner's filter ``name`` on ``page``; refused naming the field, nothing written."""
    if page not in SavedFilterPage.values:
        raise ActionRefusedError([{"path": "page", "message": "page must be events or audit"}])
    name = name.strip()[:NAME_MOST]
    if not name:
        raise ActionRefusedError([{"path": "name", "message": "Give the filter a name to save it."}])
    saved = SavedFilter(owner=owner, page=page, name=name, query=saved_filter_query(query))
    try:
        with transaction.atomic():
            saved.save()
            audit_record(
                actor=owner,
                action=AuditAction.SAVED_FILTER_CREATE,
                target=f"saved_filter:{saved.pk}",
                details={"page": saved.page, "name": saved.name, "query": saved.query},
            )
    except IntegrityError:
        message = f"You already have a filter called “{name}”: pick another name or delete it."
        raise ActionRefusedError([{"path": "name", "message": message}]) from None
    return saved


def saved_filter_delete(*, owner: User, filter_id: int) -> SavedFilter:
    """Delete one of the owner's filters; ``SavedFilter.DoesNotExist`` when the owner has none of that id."""
    with transaction.atomic():
        saved = SavedFilter.objects.select_for_update().get(pk=filter_id, owner=owner)
        audit_record(
            actor=owner,
            action=AuditAction.SAVED_FILTER_DELETE,
            target=f"saved_filter:{saved.pk}",
            details={"page": saved.page, "name": saved.name, "query": saved.query},
        )
        saved.delete()
    return saved
