"""The one keyset paginator: every row once, in order, both ways, ties on time broken by id, edited links refused."""

from __future__ import annotations

import pytest

from busapp.errors import HistoryQueryError
from busapp.history import AUDIT_KEYSET, HISTORY_KEYSET
from busapp.models import AuditEntry, Event
from busapp.paging import Keyset
from tests.support import publish_deduction

pytestmark = pytest.mark.usefixtures("demo", "bus")


def _walk(keyset: Keyset, rows, size: int) -> tuple[list[int], list[int]]:
    """Every page to the oldest, then back to the newest: the ids seen going older, and going newer."""
    page = keyset.page(rows, None, size=size)
    older = [row.pk for row in page.rows]
    while page.older:
        page = keyset.page(rows, keyset.decode(page.older), size=size)
        older += [row.pk for row in page.rows]
    newer = [row.pk for row in reversed(page.rows)]
    while page.newer:
        page = keyset.page(rows, keyset.decode(page.newer), size=size)
        newer += [row.pk for row in reversed(page.rows)]
    return older, newer


def test_history_pages_walk_every_event_once_even_when_events_share_a_timestamp() -> None:
    events = [publish_deduction(deduction) for deduction in range(7)]
    Event.objects.filter(pk__in=[event.pk for event in events[2:6]]).update(timestamp=events[2].timestamp)
    rows = Event.objects.all()
    newest_first = list(HISTORY_KEYSET.ordered(rows, older=True).values_list("pk", flat=True))

    older, newer = _walk(HISTORY_KEYSET, rows, size=2)

    assert older == newest_first
    assert newer == newest_first[::-1]


def test_audit_pages_walk_every_entry_once_both_ways() -> None:
    for deduction in range(5):
        publish_deduction(deduction)
    rows = AuditEntry.objects.all()
    newest_first = list(rows.order_by("-seq").values_list("pk", flat=True))

    older, newer = _walk(AUDIT_KEYSET, rows, size=3)

    assert older == newest_first
    assert newer == newest_first[::-1]


def test_an_edited_or_foreign_page_link_is_refused_with_the_field_and_what_to_do() -> None:
    publish_deduction(1)
    link = HISTORY_KEYSET.encode((Event.objects.get().timestamp, 1), older=True)
    for damaged in (link[:-2] + "xx", AUDIT_KEYSET.encode((1,), older=True), "o2026|1", ""):
        with pytest.raises(HistoryQueryError) as refused:
            HISTORY_KEYSET.decode(damaged)
        assert refused.value.errors == [
            {"path": "cursor", "message": "this page link was changed or is damaged: start again from the first page"}
        ]
