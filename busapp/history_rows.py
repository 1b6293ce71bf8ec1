"""Raw SQL of the history check (vendor branches): history rows that no audit entry vouches for.

An event is vouched for by its own entry (``event.publish``, ``event.record``: target
``event:<id>``) or by a batch's (``event.publish_batch``: its id in ``details.events``).
Looking an id up inside every batch's list needs the database's JSON table functions,
``jsonb_array_elements_text`` on PostgreSQL and ``json_each`` on SQLite, so it lives here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from functools import partial

from django.db import connection, transaction

from busapp.models import AuditAction, AuditEntry, Event, Topic

SINGLE_ACTIONS = (AuditAction.EVENT_PUBLISH, AuditAction.EVENT_RECORD)
BATCH_ACTION = AuditAction.EVENT_PUBLISH_BATCH
_PAGE_ROWS = 2_000


def events_unvouched() -> Iterator[tuple[str, str, str]]:
    """(envelope id, topic, recorded at as text) of every history row no audit entry names, oldest first, streamed.

    PostgreSQL reads through a server-side cursor (which lives in a transaction) and joins
    the batch lists as an anti-join; SQLite builds the set of batch ids once (``NOT IN``
    over ``json_each``) and reads with a plain cursor.
    """
    quote = connection.ops.quote_name
    events, topics, audit = (quote(model._meta.db_table) for model in (Event, Topic, AuditEntry))
    reading: AbstractContextManager[object]
    if connection.vendor == "postgresql":
        in_a_batch = (
            f"EXISTS (SELECT 1 FROM {audit} b CROSS JOIN LATERAL jsonb_array_elements_text(b.details -> 'events') "  # noqa: S608
            "AS m(id) WHERE b.action = %s AND m.id = e.envelope_id)"
        )
        reading = transaction.atomic()
    else:
        in_a_batch = (
            f"e.envelope_id IN (SELECT m.value FROM {audit} b, json_each(b.details, '$.events') m "  # noqa: S608
            "WHERE b.action = %s AND m.value IS NOT NULL)"
        )
        reading = nullcontext()
    query = (
        f"SELECT e.envelope_id, t.name, CAST(e.created_at AS TEXT) FROM {events} e "  # noqa: S608
        f"JOIN {topics} t ON t.id = e.topic_id "
        f"WHERE NOT EXISTS (SELECT 1 FROM {audit} a WHERE a.target = 'event:' || e.envelope_id "
        "AND a.action IN (%s, %s)) "
        f"AND NOT {in_a_batch} ORDER BY e.id"
    )
    with reading, connection.chunked_cursor() as cursor:
        if connection.vendor == "postgresql":
            # Every row is read: plan for all of them. A cursor is planned for its first tenth,
            # which chose a nested loop over every batch list per event (a minute for 50,000).
            with connection.cursor() as settings_cursor:
                settings_cursor.execute("SET LOCAL cursor_tuple_fraction = 1.0")
        cursor.execute(query, [*SINGLE_ACTIONS, BATCH_ACTION])
        for page in iter(partial(cursor.fetchmany, _PAGE_ROWS), []):
            for envelope_id, topic, recorded_at in page:
                yield str(envelope_id), str(topic), str(recorded_at)
