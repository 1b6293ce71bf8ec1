"""How many events each schema version accepted, without an index that every publish would pay for.

The history has no index on an event's schema version (each index costs every publish a
write). The bus worker instead adds new events to ``VersionEventCount`` a slice at a time,
by event id, up to events older than ``COUNT_HORIZON``; a page adds the few events since
(an id range on the primary key). An event committed more than ``COUNT_HORIZON`` after it
was written, behind events already counted, would be missed: publishes commit in milliseconds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from django.db import transaction
from django.db.models import Count, F, Max
from django.utils import timezone

from busapp.models import Event, EventCountMark, SchemaVersion, VersionEventCount

COUNT_HORIZON = dt.timedelta(minutes=2)
COUNT_SLICE = 50_000  # event ids one step counts, at most
COUNT_EVERY_SECONDS = 60.0
COUNT_LEASE_SECONDS = 300


@transaction.atomic
def version_counts_advance(*, now: dt.datetime | None = None) -> int:
    """Add the next slice of events older than the horizon to their versions' counts; answer how many were added."""
    horizon = (now or timezone.now()) - COUNT_HORIZON
    mark, _ = EventCountMark.objects.select_for_update().get_or_create(pk=1)
    newer = Event.objects.filter(pk__gt=mark.through_event_id)
    slice_end = newer.order_by("pk").values_list("pk", flat=True)[COUNT_SLICE - 1 : COUNT_SLICE].first()
    window = newer.filter(pk__lte=slice_end) if slice_end is not None else newer
    through = window.filter(created_at__lt=horizon).aggregate(through=Max("pk"))["through"]
    if through is None:
        return 0
    counted = (
        Event.objects.filter(pk__gt=mark.through_event_id, pk__lte=through)
        .values("schema_version_id")
        .annotate(events=Count("pk"))
        .order_by()
    )
    added = 0
    for row in counted:
        tally, _ = VersionEventCount.objects.get_or_create(schema_version_id=row["schema_version_id"])
        VersionEventCount.objects.filter(pk=tally.pk).update(events=F("events") + row["events"])
        added += row["events"]
    mark.through_event_id, mark.counted_at = through, timezone.now()
    mark.save(update_fields=["through_event_id", "counted_at"])
    return added


def version_event_counts(versions: Iterable[SchemaVersion]) -> dict[int, int]:
    """Events accepted under each version, by version id: the worker's counts plus the events since its mark."""
    ids = [version.pk for version in versions]
    counts = dict.fromkeys(ids, 0)
    counts.update(
        VersionEventCount.objects.filter(schema_version_id__in=ids).values_list("schema_version_id", "events")
    )
    mark = EventCountMark.objects.filter(pk=1).values_list("through_event_id", flat=True).first() or 0
    since = (
        Event.objects.filter(pk__gt=mark, schema_version_id__in=ids)
        .values("schema_version_id")
        .annotate(events=Count("pk"))
        .order_by()
    )
    for row in since:
        counts[row["schema_version_id"]] += row["events"]
    return counts
