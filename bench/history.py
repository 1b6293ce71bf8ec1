"""History at scale: keyset pages, payload conditions, streaming export and the audit chain check.

Run: ``.venv/bin/python bench/history.py`` (SQLite in a temporary folder, 1,000,000 events) or
``.venv/bin/python bench/history.py --database-url postgres://postgres@127.0.0.1:5432/hms_bench_history``
(the benchmark creates that database, and drops it at the end unless ``--keep``).
It starts its own redis-server on a free port, as the other benchmarks do.

Setup: production settings (``DEBUG=0``), ``migrate``, ``load_demo``, ``collectstatic``; then 20
topics with 2 or 3 event types each (one schema version each) made through the actions, and
``--events`` events written straight into the tables (``executemany`` in one transaction per
chunk on SQLite, ``COPY`` on PostgreSQL; not through ``event_publish``, which
``bench/publish.py`` measures): payloads like ``{"standard_deduction": 0..30000, "state": one
of 50, "taxpayer": {"state", "filing_status"}, "note": short text}``, the wire envelope as
``event_build`` makes it, timestamps over two years rising with the id, four sources, five
publishers, the newest few events still pending. Each event gets its ``event.publish``
audit entry, hash-chained onto the demo's entries with ``busapp.audit.entry_hash``, and the
chain head is moved to the last one. Then ``ANALYZE`` (``VACUUM ANALYZE`` on PostgreSQL).

Measured, each sample warm, the page queries taking turns sample by sample:
- pages through ``events_filtered(HistoryFilter(...), topics=None)`` (with the view's
  ``select_related``) and ``history_page``: the first page; one topic + one type + a 60-day
  range; a quiet topic (0.05% of the events); a deep keyset page (the cursor of row 249,999
  built once: rows 250,000 to 250,049, i.e. 5,000 pages deep); payload conditions (one
  matching half the events, one selective one with a topic, one matching nothing, which must
  read every row: the worst case);
- the baseline for pages: the same deep page by OFFSET (``events[250000:250050]``);
- the page's match count (``history_count``: exact up to 1,000, else the planner's estimate) for
  every event, the range, the quiet topic and a payload condition; and the field picker
  (``EventFilterForm.payload_fields``, every topic's schema versions walked); and the page of
  one topic and type narrowed to the events that changed ``standard_deduction`` (a stretch of
  2,000 events read, their values compared in order);
- ``export_lines(events, fmt, newest=export_newest(events))`` as CSV and NDJSON over the whole history, rows/s,
  bytes, and the growth of peak resident memory (``VmHWM``, reset before each run);
- the baseline for export: ``list()`` of 100,000 model instances, then CSV of them;
- ``audit_verify`` over every entry, entries/s;
- ``GET /events/``, and the same page only where ``standard_deduction`` changed in one topic and
  type, through Django's test ``Client`` signed in as the demo ``auditor``.

The query plans of the page queries are printed (``EXPLAIN QUERY PLAN`` on SQLite, ``EXPLAIN`` on
PostgreSQL; ``--analyze`` adds ``ANALYZE, BUFFERS`` there), with the plans that read the event table
without an index, or sort what they read, called out.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import gc
import inspect
import io
import itertools
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import RedisServer  # noqa: E402

PASSWORD = "bench-password-123"
ACTOR = "cli:bench"
AIM_PAGE_P95_MS = 100.0
AIM_EXPORT_ROWS_S = 50_000
AIM_VERIFY_ENTRIES_S = 100_000
DEEP_OFFSET = 250_000  # 5,000 pages of 50 before the page measured
NAIVE_EXPORT_ROWS = 100_000
CHUNK = 20_000  # rows generated and written at a time
SPAN = dt.timedelta(days=730)
RANGE_SINCE, RANGE_UNTIL = dt.timedelta(days=400), dt.timedelta(days=340)  # before the newest event

TOPICS = [
    "irs.refunds",
    "irs.returns",
    "irs.withholding-tables",
    "irs.audits",
    "irs.notices",
    "irs.payments",
    "irs.extensions",
    "irs.credits",
    "irs.deductions",
    "irs.penalties",
    "state.tax-rates",
    "state.refunds",
    "state.filings",
    "treasury.bonds",
    "treasury.auctions",
    "ssa.benefits",
    "ssa.wages",
    "payroll.runs",
    "payroll.tables",
    "policy.deductions",
]
TYPE_VERBS = ("updated", "published", "withdrawn")
_STATE_CODES = (
    "AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO "
    "MT NE NV NH NJ NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY"
)
STATES = tuple(_STATE_CODES.split())
FILING = ("single", "married_joint", "married_separate", "head_of_household", "widow")
_NOTE_WORDS = (
    "annual adjustment correction inflation indexed revised preliminary final notice "
    "bracket table withholding schedule update reissued amended quarterly"
)
WORDS = tuple(_NOTE_WORDS.split())
# (source, publisher name, demo user or None, weight)
PUBLISHERS = (
    ("api", "policy", "policy", 45),
    ("form", "policy2", "policy2", 20),
    ("form", "admin", "admin", 5),
    ("cli", "cli:sync", None, 5),
    ("external", "external:irs-feed", None, 25),
)
RARE_SHARE = 0.0005  # the last topic's share of the events: a quiet topic
PENDING_NEWEST = 25  # the newest events are still in the outbox

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "standard_deduction": {"type": "number", "minimum": 0, "maximum": 30000},
        "state": {"type": "string", "enum": list(STATES)},
        "taxpayer": {
            "type": "object",
            "properties": {"state": {"type": "string", "enum": list(STATES)}, "filing_status": {"enum": list(FILING)}},
        },
        "note": {"type": "string", "maxLength": 200},
    },
    "required": ["standard_deduction", "state"],
}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="default: SQLite in a temporary folder")
    parser.add_argument("--events", type=int, default=1_000_000, help="events to generate (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=50, help="samples per page query (default 50)")
    parser.add_argument("--analyze", action="store_true", help="PostgreSQL: EXPLAIN (ANALYZE, BUFFERS)")
    parser.add_argument("--keep", action="store_true", help="keep the database (and the temporary folder)")
    return parser.parse_args()


# --- setup -----------------------------------------------------------------------------------


def _postgres_database(url: str, *, create: bool) -> None:
    """Drop the benchmark's PostgreSQL database, and create it again (``create``)."""
    import psycopg

    parts = urlparse(url)
    name = parts.path.lstrip("/")
    maintenance = urlunparse(parts._replace(path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            admin.execute(f'CREATE DATABASE "{name}"')


def _setup(database_url: str, redis_url: str, var_dir: str) -> None:
    """Production settings on the bench's database and Redis; migrate, the demo data, static files."""
    os.environ.update(
        DJANGO_SETTINGS_MODULE="hmsadmin.settings",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        DEBUG="0",
        SECRET_KEY="bench-only-secret-key",
        VAR_DIR=var_dir,
        LOG_LEVEL="WARNING",
    )
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    with open(os.devnull, "w") as quiet:
        call_command("load_demo", password=PASSWORD, stdout=quiet)
    try:
        call_command("collectstatic", interactive=False, verbosity=0)  # DEBUG=0 serves the hashed manifest's names
    except Exception as error:  # the page is measured either way; the failure is printed
        from django.test.utils import override_settings

        first_line = str(error).splitlines()[0]
        print(f"note: collectstatic failed ({type(error).__name__}: {first_line}); pages use unhashed static names")
        plain = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}
        override_settings(STORAGES={**settings.STORAGES, "staticfiles": plain}).enable()


@dataclass(frozen=True)
class Kind:
    """One event type of the catalogue, with what an event of it carries."""

    topic_id: int
    topic: str
    type_id: int
    type_name: str
    version_id: int
    version: int


def _catalogue() -> list[Kind]:
    """20 topics, 2 or 3 event types each, one schema version each, made through the services (audited)."""
    from busapp.actions.registry import event_type_create, schema_version_create, topic_create

    kinds = []
    for number, name in enumerate(TOPICS):
        topic = topic_create(name=name, actor=ACTOR, description=f"History benchmark topic {number + 1}.")
        stem = name.rsplit(".", 1)[-1].replace("-", "_")
        for verb in TYPE_VERBS[: 2 + number % 2]:
            event_type = event_type_create(topic=topic, name=f"{stem}.{verb}", actor=ACTOR)
            version = schema_version_create(event_type=event_type, schema=SCHEMA, actor=ACTOR)
            kinds.append(Kind(topic.pk, name, event_type.pk, event_type.name, version.pk, version.version))
    return kinds


def _payload(rng: random.Random, number: int) -> dict[str, Any]:
    """A realistic payload: a deduction, a state, a taxpayer object and a short note."""
    state = rng.choice(STATES)
    deduction: float = rng.randrange(0, 30_001)
    if rng.random() < 0.2:
        deduction = round(deduction + rng.randrange(0, 100) / 100, 2)
    return {
        "standard_deduction": deduction,
        "state": state,
        "taxpayer": {"state": state if rng.random() < 0.8 else rng.choice(STATES), "filing_status": rng.choice(FILING)},
        "note": f"{rng.choice(WORDS)} {rng.choice(WORDS)} #{number % 9973}",
    }


class _Columns:
    """Column order of a table and how to fill the columns this benchmark does not set (their defaults)."""

    def __init__(self, model: Any, given: Collection[str]) -> None:
        from django.db import connection

        fields = [field for field in model._meta.local_concrete_fields if not field.primary_key]
        self.table = model._meta.db_table
        self.names = [field.column for field in fields]
        self.defaults = {
            field.column: field.get_db_prep_save(field.get_default(), connection)
            for field in fields
            if field.column not in given
        }

    def row(self, values: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(values[name] if name in values else self.defaults[name] for name in self.names)


def _generate(count: int, kinds: list[Kind]) -> float:
    """Write ``count`` events and their chained audit entries; the head moved to the last. Seconds taken."""
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.db import connection, transaction

    from busapp.audit import entry_hash
    from busapp.models import AuditEntry, AuditHead, Event
    from busapp.publishing import envelope_head, envelope_wire
    from busapp.selectors import envelopes_sha256
    from busapp.validation import payload_json

    start = time.perf_counter()
    rng = random.Random(20261127)
    users = dict(User.objects.values_list("username", "id"))
    publishers = [(source, name, users.get(user) if user else None) for source, name, user, _ in PUBLISHERS]
    weights = [weight for *_, weight in PUBLISHERS]
    # Every topic alike but the last, which gets RARE_SHARE of the events (split among its types).
    per_topic = {kind.topic: sum(1 for other in kinds if other.topic == kind.topic) for kind in kinds}
    common = (1 - RARE_SHARE) / (len(TOPICS) - 1)
    kind_weights = [(RARE_SHARE if kind.topic == TOPICS[-1] else common) / per_topic[kind.topic] for kind in kinds]
    head = AuditHead.objects.get(pk=1)
    seq, prev_hash = head.seq, head.hash
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    first = now - SPAN
    step = SPAN.total_seconds() / count
    grace = dt.timedelta(seconds=settings.BUS_RELAY_GRACE_SECONDS)
    sample_event = {"envelope_id", "topic_id", "event_type_id", "schema_version_id", "payload", "envelope"}
    event_columns = _Columns(
        Event,
        sample_event
        | {"timestamp", "source", "publisher_id", "publisher_name", "status", "stream_id", "created_at"}
        | {"published_at", "attempts", "next_attempt_at", "last_error"},
    )
    audit_columns = _Columns(
        AuditEntry, {"seq", "time", "actor_id", "actor_name", "action", "target", "details", "prev_hash", "hash"}
    )
    postgres = connection.vendor == "postgresql"
    adapt = connection.ops.adapt_datetimefield_value

    def stamp(value: dt.datetime) -> Any:
        return value if postgres else adapt(value)

    written = 0
    while written < count:
        events, entries = [], []
        for number in range(written, min(count, written + CHUNK)):
            kind = rng.choices(kinds, kind_weights)[0]
            source, publisher_name, publisher_id = rng.choices(publishers, weights)[0]
            moment = first + dt.timedelta(seconds=round((number + rng.random() * 0.8) * step, 6))
            accepted = moment + dt.timedelta(microseconds=rng.randrange(200, 3000))
            pending = number >= count - PENDING_NEWEST
            payload = _payload(rng, number)
            envelope_members = envelope_head(
                event_type=kind.type_name,
                topic=kind.topic,
                schema_version=kind.version,
                source=source,
                publisher=publisher_name,
                timestamp=moment.timestamp(),
            )
            envelope_id, envelope = envelope_wire(
                head=envelope_members,
                payload_json=payload_json(payload),
                envelope_id=uuid.UUID(int=rng.getrandbits(128), version=4),
            )
            events.append(
                event_columns.row(
                    {
                        "envelope_id": envelope_id,
                        "topic_id": kind.topic_id,
                        "event_type_id": kind.type_id,
                        "schema_version_id": kind.version_id,
                        "payload": json.dumps(payload),  # what JSONField writes
                        "envelope": envelope,
                        "timestamp": stamp(moment),
                        "source": source,
                        "publisher_id": publisher_id,
                        "publisher_name": publisher_name,
                        "status": "pending" if pending else "published",
                        "stream_id": "" if pending else f"{int(moment.timestamp() * 1000)}-0",
                        "created_at": stamp(accepted),
                        "published_at": None if pending else stamp(accepted + dt.timedelta(milliseconds=3)),
                        "attempts": 0,
                        "next_attempt_at": stamp(moment + grace),
                        "last_error": "",
                    }
                )
            )
            seq += 1
            details = {
                "topic": kind.topic,
                "type": kind.type_name,
                "schema_version": kind.version,
                "source": source,
                "envelope_sha256": envelopes_sha256([envelope]),
            }
            digest = entry_hash(
                prev_hash=prev_hash,
                seq=seq,
                time=accepted,
                actor_name=publisher_name,
                action="event.publish",
                target=f"event:{envelope_id}",
                details=details,
            )
            entries.append(
                audit_columns.row(
                    {
                        "seq": seq,
                        "time": stamp(accepted),
                        "actor_id": publisher_id,
                        "actor_name": publisher_name,
                        "action": "event.publish",
                        "target": f"event:{envelope_id}",
                        "details": json.dumps(details),
                        "prev_hash": prev_hash,
                        "hash": digest,
                    }
                )
            )
            prev_hash = digest
        with transaction.atomic():
            _rows_write(event_columns, events)
            _rows_write(audit_columns, entries)
            AuditHead.objects.filter(pk=1).update(seq=seq, hash=prev_hash)
        written += len(events)
        print(f"\r  generated {written:,} of {count:,} events", end="", flush=True)
    print()
    return time.perf_counter() - start


def _rows_write(columns: _Columns, rows: list[tuple[Any, ...]]) -> None:
    """Rows into a table: COPY on PostgreSQL, one executemany on SQLite (inside the caller's transaction)."""
    from django.db import connection

    names = ", ".join(columns.names)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.cursor.copy(f"COPY {columns.table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            marks = ", ".join("?" for _ in columns.names)
            cursor.cursor.executemany(f"INSERT INTO {columns.table} ({names}) VALUES ({marks})", rows)  # noqa: S608


def _analyze() -> float:
    """Statistics for the planner (and on PostgreSQL the visibility map, as autovacuum would set it)."""
    from django.db import connection

    start = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE" if connection.vendor == "postgresql" else "ANALYZE")
    return time.perf_counter() - start


# --- measuring -------------------------------------------------------------------------------


def _p(times: list[float], percent: int) -> float:
    """The ``percent`` percentile (nearest rank)."""
    ordered = sorted(times)
    return ordered[max(0, -(-len(ordered) * percent // 100) - 1)]


def _ms(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def _status_kib(name: str) -> int:
    """A line of /proc/self/status in KiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def _peak_growth() -> Iterator[dict[str, float]]:
    """Peak resident memory growth (MiB) of what runs inside: VmHWM reset first (``/proc/self/clear_refs``)."""
    gc.collect()
    found: dict[str, float] = {}
    before = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        exact = True
    except OSError:
        exact = False
    yield found
    found["mib"] = (_status_kib("VmHWM") - before) / 1024 if exact else float("nan")
    found["rss_after_mib"] = _status_kib("VmRSS") / 1024


@dataclass
class PageQuery:
    """One page query: what the history is filtered by, and the cursor (None: the first page)."""

    name: str
    build: Callable[[], Any]  # returns the page (so the result can be checked)
    samples: list[float]
    sql: list[str]


def _page_queries(deep_offset: int) -> tuple[list[PageQuery], Callable[[], Any], dict[str, Any]]:
    """The page queries measured, the OFFSET baseline, and facts about the data they run on."""
    from busapp.forms import EventFilterForm
    from busapp.history import (
        HISTORY_KEYSET,
        HistoryFilter,
        condition_parse,
        events_filtered,
        history_count,
        history_page,
        history_page_at,
    )
    from busapp.models import Event, EventType, Topic
    from busapp.paging import Position

    def events(history_filter: HistoryFilter) -> Any:
        return events_filtered(history_filter, topics=None).select_related("topic", "event_type")  # as the view

    newest = Event.objects.order_by("-timestamp", "-id").values_list("timestamp", flat=True)[0]
    # the topic with three types, its second type
    ranged_type = EventType.objects.filter(topic__name=TOPICS[1]).order_by("name")[1]
    ranged = HistoryFilter(
        topic=TOPICS[1], event_type=ranged_type.name, since=newest - RANGE_SINCE, until=newest - RANGE_UNTIL
    )
    everything = HistoryFilter()
    wide = HistoryFilter(conditions=(condition_parse("standard_deduction >= 15000"),))
    rare = HistoryFilter(topic=TOPICS[-1])
    selective = HistoryFilter(topic=TOPICS[3], conditions=(condition_parse('state = "WY"'),))
    nothing = HistoryFilter(conditions=(condition_parse('taxpayer.state = "XX"'),))
    changed = HistoryFilter(topic=TOPICS[1], event_type=ranged_type.name, changed=("standard_deduction",))
    before_deep = events(everything).values_list("timestamp", "id")[deep_offset - 1]
    deep_cursor = Position((before_deep[0], before_deep[1]), older=True)
    facts = {
        "ranged": f"topic {TOPICS[1]}, type {ranged_type.name}, "
        f"{(newest - RANGE_SINCE):%Y-%m-%d} to {(newest - RANGE_UNTIL):%Y-%m-%d}",
        "ranged_rows": events(ranged).count(),
        "selective_rows": events(selective).count(),
        "wide_rows": events(wide).count(),
        "rare_rows": events(rare).count(),
        "deep_cursor": deep_cursor,
        "changed_type": ranged_type.name,
    }

    def page(history_filter: HistoryFilter, cursor: Position | None = None) -> Any:
        """The page as the view asks for it (payload conditions within the scan budget)."""
        encoded = HISTORY_KEYSET.encode(cursor.key, older=cursor.older) if cursor else None
        return history_page_at(history_filter, topics=None, cursor=encoded)

    queries = [
        PageQuery("first page", lambda: page(everything), [], []),
        PageQuery("topic + type + 60-day range", lambda: page(ranged), [], []),
        PageQuery(f"topic {TOPICS[-1]} (a quiet topic)", lambda: page(rare), [], []),
        PageQuery(f"deep keyset page ({deep_offset // 50:,} pages in)", lambda: page(everything, deep_cursor), [], []),
        PageQuery("where standard_deduction >= 15000", lambda: page(wide), [], []),
        PageQuery(f'topic {TOPICS[3]} + where state = "WY"', lambda: page(selective), [], []),
        PageQuery('where taxpayer.state = "XX" (no match: worst case)', lambda: page(nothing), [], []),
        PageQuery("  baseline: the same, no scan budget (before)", lambda: history_page(events(nothing), None), [], []),
        PageQuery("count: every event", lambda: history_count(everything, topics=None), [], []),
        PageQuery("count: topic + type + 60-day range", lambda: history_count(ranged, topics=None), [], []),
        PageQuery(f"count: topic {TOPICS[-1]} (a quiet topic)", lambda: history_count(rare, topics=None), [], []),
        PageQuery("count: where standard_deduction >= 15000", lambda: history_count(wide, topics=None), [], []),
        PageQuery("field picker: every topic's schema fields", lambda: picker(), [], []),
        PageQuery("topic + type, only where standard_deduction changed", lambda: page(changed), [], []),
    ]

    def picker() -> list[str]:
        """The history form's field picker for someone who views every topic."""
        names = list(Topic.objects.values_list("name", flat=True))
        return EventFilterForm({}, topic_names=names).payload_fields().listed()

    def offset_page() -> list[Any]:
        return list(events(everything)[deep_offset : deep_offset + 50])

    return queries, offset_page, facts


def _captured_sql(call: Callable[[], Any]) -> tuple[Any, list[str]]:
    """Run ``call`` once and return its result and the SQL it ran (as executed, parameters in)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        result = call()
    return result, [query["sql"] for query in captured.captured_queries]


def _plan(sql: str, analyze: bool) -> list[str]:
    """The database's plan of one statement, as lines (an estimate's EXPLAIN is its own plan)."""
    from django.db import connection

    if sql.lstrip().upper().startswith("EXPLAIN"):
        return ["(an EXPLAIN: the planner's estimate, no plan of its own)"]
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
            depth: dict[int, int] = {0: -1}
            lines = []
            for node, parent, _, detail in cursor.fetchall():
                depth[node] = depth.get(parent, -1) + 1
                lines.append(f"{'  ' * depth[node]}{detail}")
            return lines
        cursor.execute(f"EXPLAIN {'(ANALYZE, BUFFERS) ' if analyze else ''}{sql}")
        return [row[0] for row in cursor.fetchall()]


def _plan_flags(lines: list[str], vendor: str) -> list[str]:
    """What a plan does without an index on the event table, or sorts."""
    flags = []
    for line in lines:
        detail = line.strip()
        if vendor == "sqlite":
            if re.match(r"SCAN busapp_event\b", detail) and " USING " not in detail:
                flags.append(f"reads busapp_event without an index: {detail}")
            if "TEMP B-TREE" in detail:
                flags.append(f"sorts: {detail}")
        else:
            if re.search(r"Seq Scan on busapp_event\b", detail):
                flags.append(f"reads busapp_event without an index: {detail}")
            if re.match(r"(->  )?(Incremental )?Sort\b", detail):
                flags.append(f"sorts: {detail}")
    return flags


def _export(fmt: str) -> dict[str, Any]:
    """The whole history exported: rows, bytes, seconds, peak memory growth."""
    from busapp.history import HistoryFilter, events_filtered, export_lines, export_newest

    rows = size = 0
    with _peak_growth() as memory, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        events = events_filtered(HistoryFilter(), topics=None)
        for text in export_lines(events, fmt, newest=export_newest(events)):
            rows += text.count("\n")
            size += len(text.encode())
        seconds = time.perf_counter() - start
    rows -= 1 if fmt == "csv" else 0  # the header
    first_warning = str(caught[0].message) if caught else ""
    return {
        "rows": rows,
        "bytes": size,
        "seconds": seconds,
        "rate": rows / seconds,
        "warnings": len(caught),
        "first_warning": first_warning,
        **memory,
    }


def _export_chunk_sql() -> list[str]:
    """The SQL of an export's first two chunks (the second one is the keyset step)."""
    from busapp.history import HistoryFilter, events_filtered, export_lines, export_newest

    def two_chunks() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            events = events_filtered(HistoryFilter(), topics=None)
            chunks = export_lines(events, "ndjson", newest=export_newest(events))
            list(itertools.islice(chunks, 2))

    return _captured_sql(two_chunks)[1][-1:]


def _naive_export(count: int) -> dict[str, float]:
    """The baseline: model instances in a list, then CSV of them."""
    from busapp.history import EXPORT_COLUMNS, HistoryFilter, events_filtered

    def iso(value: dt.datetime | None) -> str:
        return value.isoformat() if value else ""

    with _peak_growth() as memory:
        start = time.perf_counter()
        events = list(
            events_filtered(HistoryFilter(), topics=None).select_related("topic", "event_type", "schema_version")[
                :count
            ]
        )
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(EXPORT_COLUMNS)
        for event in events:
            writer.writerow(
                (
                    event.envelope_id,
                    iso(event.timestamp),
                    event.topic.name,
                    event.event_type.name,
                    event.schema_version.version,
                    event.source,
                    event.publisher_name,
                    event.status,
                    event.stream_id,
                    iso(event.created_at),
                    iso(event.published_at),
                    json.dumps(event.payload, ensure_ascii=False),
                )
            )
        size = len(buffer.getvalue().encode())
        seconds = time.perf_counter() - start
        del events
    return {"rows": count, "bytes": size, "seconds": seconds, "rate": count / seconds, **memory}


def _verify() -> dict[str, Any]:
    """``audit_verify`` over the whole chain, called as the signature of the day allows."""
    from busapp import audit

    parameters = inspect.signature(audit.audit_verify).parameters
    options: dict[str, Any] = {}
    if "checked_by" in parameters:
        options["checked_by"] = "bench"
    if "resume" in parameters:
        options["resume"] = False  # the whole chain, not from the last check
    with _peak_growth() as memory:
        start = time.perf_counter()
        report = audit.audit_verify(**options)
        seconds = time.perf_counter() - start
    assert report.intact, report.problem
    return {
        "checked": report.checked,
        "seconds": seconds,
        "rate": report.checked / seconds,
        "call": f"audit_verify({', '.join(f'{k}={v!r}' for k, v in options.items())})",
        **memory,
    }


def _views(repeat: int, paths: list[str]) -> dict[str, list[float]]:
    """Each page's whole view as the demo auditor (``GET``): wall ms per request, the pages taking turns."""
    from django.contrib.auth.models import User
    from django.test import Client

    client = Client()
    client.force_login(User.objects.get(username="auditor"))
    for path in paths:
        response = client.get(path)
        assert response.status_code == 200, (path, response.status_code)
        assert response.content.count(b"/events/") > 50, f"{path} lists no events"
    samples: dict[str, list[float]] = {path: [] for path in paths}
    for _ in range(repeat):
        for path in paths:
            samples[path].append(_ms(partial(client.get, path)))
    return samples


def _commit() -> str:
    """The commit measured, and whether the tree differed from it (read-only git commands)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"{commit}{' with uncommitted changes' if changed else ''}"


def _database_line() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("SELECT sqlite_version()")
            version = f"SQLite {cursor.fetchone()[0]} (WAL, synchronous=NORMAL)"
            size = Path(connection.settings_dict["NAME"]).stat().st_size
        else:
            cursor.execute("SHOW server_version")
            version = f"PostgreSQL {cursor.fetchone()[0]}"
            cursor.execute("SELECT pg_database_size(current_database())")
            size = cursor.fetchone()[0]
    return f"{version}, database {size / 2**20:,.0f} MiB"


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def main() -> None:
    """Generate the history, measure, and print each figure with its aim and baseline."""
    arguments = _arguments()
    redis_server = RedisServer()
    redis_server.start()
    workdir = tempfile.mkdtemp(prefix="hms-bench-history-")
    postgres = bool(arguments.database_url and arguments.database_url.startswith("postgres"))
    database_url = arguments.database_url or f"sqlite:///{workdir}/bench.sqlite3"
    if postgres:
        _postgres_database(database_url, create=True)
    try:
        _run(arguments, database_url, redis_server, workdir)
    finally:
        _teardown(redis_server, workdir, database_url, keep=arguments.keep)


def _teardown(redis_server: RedisServer, workdir: str, database_url: str, *, keep: bool, kept: str = "") -> None:
    """Close the connections, stop the bench's Redis, drop its database and folder (unless ``keep``)."""
    with contextlib.suppress(Exception):
        from django.db import connections

        connections.close_all()
    redis_server.stop()
    shutil.rmtree(redis_server.workdir, ignore_errors=True)
    if keep:
        print(f"kept: {database_url}{kept}")
        return
    if database_url.startswith("postgres"):
        _postgres_database(database_url, create=False)
    shutil.rmtree(workdir, ignore_errors=True)


def _run(arguments: argparse.Namespace, database_url: str, redis_server: RedisServer, workdir: str) -> None:
    _setup(database_url, redis_server.url(0), workdir)
    from django.db import connection

    from busapp.models import AuditEntry, Event

    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"commit: {_commit()}")
    kinds = _catalogue()
    generate_seconds = _generate(arguments.events, kinds)
    connection.close()  # measure on a fresh connection, as a request would have
    analyze_seconds = _analyze()
    events_total, entries_total = Event.objects.count(), AuditEntry.objects.count()
    print(f"database: {_database_line()}; Redis: own redis-server")
    print(
        f"history: {events_total:,} events in {len({kind.topic for kind in kinds})} topics "
        f"({len(kinds)} types), {entries_total:,} audit entries; "
        f"generated in {generate_seconds:.0f} s "
        f"({arguments.events / generate_seconds:,.0f} events/s with their entries), "
        f"{'VACUUM ANALYZE' if connection.vendor == 'postgresql' else 'ANALYZE'} {analyze_seconds:.1f} s"
    )
    deep_offset = DEEP_OFFSET if events_total > DEEP_OFFSET + 50 else events_total // 100 * 50
    queries, offset_page, facts = _page_queries(deep_offset)
    print(
        f"  range page: {facts['ranged']} ({facts['ranged_rows']:,} matching events); "
        f"standard_deduction >= 15000 matches {facts['wide_rows']:,}; "
        f'state = "WY" within {TOPICS[3]} matches {facts["selective_rows"]:,}; '
        f"the quiet topic {TOPICS[-1]} holds {facts['rare_rows']:,}"
    )

    # Plans, and a check that the keyset page is the OFFSET page.
    keyset_page = None
    for query in queries:
        page, query.sql = _captured_sql(query.build)
        if query.name.startswith("deep"):
            keyset_page = page
        uncounted = page is None and query.name.startswith("count: where")  # SQLite has no estimates
        assert uncounted or getattr(page, "events", page) or "taxpayer" in query.name or "scan budget" in query.name
    offset_rows, offset_sql = _captured_sql(offset_page)
    assert keyset_page is not None
    assert [e.pk for e in keyset_page.events] == [e.pk for e in offset_rows], "the keyset page is not the OFFSET page"

    # Samples: warm (each query ran above), taking turns.
    load_before = os.getloadavg()[0]
    offset_samples: list[float] = []
    for _ in range(arguments.repeat):
        for query in queries:
            query.samples.append(_ms(query.build))
    for _ in range(arguments.repeat):
        offset_samples.append(_ms(offset_page))
    changed_path = f"/events/?topic={TOPICS[1]}&type={facts['changed_type']}&changed=standard_deduction"
    view_samples = _views(arguments.repeat, ["/events/", changed_path])

    export_sql = _export_chunk_sql()
    exports = {fmt: _export(fmt) for fmt in ("csv", "ndjson")}
    naive = _naive_export(min(NAIVE_EXPORT_ROWS, events_total))
    verify = _verify()
    load_after = os.getloadavg()[0]

    vendor = connection.vendor
    print()
    print("Query plans of the page queries (what history_page ran):")
    for name, statements in [(query.name, query.sql) for query in queries] + [
        (f"baseline: OFFSET {deep_offset:,}", offset_sql),
        ("export: the second chunk (keyset step)", export_sql),
    ]:
        for sql in statements:
            lines = _plan(sql, arguments.analyze)
            shown = f"SELECT ... {sql[sql.index(' FROM ') + 1 :]}" if " FROM " in sql else sql  # noqa: S608
            print(f"\n[{name}]")
            print(f"  {shown[:900]}{' ...' if len(shown) > 900 else ''}")
            for line in lines:
                print(f"    {line}")
            for flag in _plan_flags(lines, vendor):
                print(f"  !! {flag}")

    offset_p95 = _p(offset_samples, 95)
    print()
    print(f"load average (1 min) when measuring began {load_before:.2f}, when it ended {load_after:.2f}")
    print(f"{'page query (history_page, 50 rows)':<56}{'p50 ms':>8}{'p95 ms':>8}{'max ms':>8}  aim p95 < 100 ms")
    for query in queries:
        p95 = _p(query.samples, 95)
        print(
            f"{query.name:<56}{_p(query.samples, 50):>8.1f}{p95:>8.1f}{max(query.samples):>8.1f}"
            f"  {_verdict(p95 < AIM_PAGE_P95_MS)}, {offset_p95 / p95:,.1f}x the OFFSET page's p95"
        )
    print(
        f"{f'baseline: the same deep page by OFFSET {deep_offset:,}':<56}{_p(offset_samples, 50):>8.1f}"
        f"{offset_p95:>8.1f}{max(offset_samples):>8.1f}"
    )
    view_names = {"/events/": "GET /events/", changed_path: "GET /events/ only where standard_deduction changed"}
    for path, samples in view_samples.items():
        view_p95 = _p(samples, 95)
        print(
            f"{view_names[path]:<56}{_p(samples, 50):>8.1f}{view_p95:>8.1f}"
            f"{max(samples):>8.1f}  {_verdict(view_p95 < AIM_PAGE_P95_MS)}"
        )
    print("  (GET: as the auditor, the whole view through the test Client)")
    print(f"  ({arguments.repeat} samples each)")
    print()
    print(f"{'export':<56}{'rows/s':>10}{'rows':>11}{'MiB out':>9}{'peak +MiB':>10}  aim >= 50,000 rows/s")
    for fmt, figures in exports.items():
        print(
            f"{f'export_lines(all, {fmt!r})':<56}{figures['rate']:>10,.0f}{figures['rows']:>11,}"
            f"{figures['bytes'] / 2**20:>9,.0f}{figures['mib']:>10.1f}"
            f"  {_verdict(figures['rate'] >= AIM_EXPORT_ROWS_S)}, {figures['rate'] / naive['rate']:.1f}x the baseline"
        )
    for fmt, figures in exports.items():
        if figures["warnings"]:
            print(f"  {fmt}: {figures['warnings']:,} warnings while exporting, the first: {figures['first_warning']}")
    print(
        f"{'baseline: list() of model instances, then CSV':<56}{naive['rate']:>10,.0f}{naive['rows']:>11,}"
        f"{naive['bytes'] / 2**20:>9,.0f}{naive['mib']:>10.1f}"
    )
    print()
    print(
        f"{verify['call']}: {verify['checked']:,} entries in {verify['seconds']:.1f} s = "
        f"{verify['rate']:,.0f} entries/s, peak +{verify['mib']:.1f} MiB; "
        f"aim >= 100,000 entries/s: {_verdict(verify['rate'] >= AIM_VERIFY_ENTRIES_S)}"
    )


if __name__ == "__main__":
    main()
