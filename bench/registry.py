"""A new schema version's whole check: a 50-field schema against 20 versions in FULL_TRANSITIVE, with diff and dry run.

Run: ``.venv/bin/python bench/registry.py`` (SQLite in a temporary folder) or
``.venv/bin/python bench/registry.py --database-url postgres://postgres@127.0.0.1:5432/hms_bench_registry``
(created, then dropped at the end; the bench starts its own redis-server, as the others do).

Setup: production settings, ``migrate``, ``load_demo``; the topic ``bench.registry`` and the
type ``bench_form.amended`` in mode FULL_TRANSITIVE, policy LENIENT; 20 versions made through
``schema_version_create``, each the publish-form bench's 50-field schema (``bench/forms.py``),
left open at the top, with one more optional property than the one before (compatible both
ways under LENIENT, so each is saved); then 1,000 accepted events and 1,000 open dead letters
of the type (one batch each through ``event_publish_batch``).

Measured, each sample warm, the paths taking turns:
- the new-version page's Check as a bus admin gets it (``POST /topics/.../versions/new/``):
  the whole check rendered, with the form preview;
- ``version_draft_check`` of version 21, the whole check: Draft 2020-12 validity, ``$ref``s and
  patterns, ``mode_findings`` against the 20 versions both ways, the keyword diff against v20
  marked writers/readers, and the dry run over the last 1,000 events and 1,000 open dead letters;
- ``schema_version_check`` (what a save runs: validity and compatibility, no diff or dry run);
- ``mode_findings`` alone (the comparison, no database);
- the baseline: ``jsoncompat.check_compat(old, new, "both")`` against the same 20 versions, the
  Rust checker the tests use as an oracle (a verdict per pair, without pointers or reasons; it
  refuses a fractional ``multipleOf``, so its copies of the schemas go without one).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.forms import _p, bench_payload, bench_schema, demo_ready  # noqa: E402
from bench.history import _postgres_database  # noqa: E402
from tests.support import RedisServer  # noqa: E402

TOPIC = "bench.registry"
EVENT_TYPE = "bench_form.amended"
VERSIONS = 20
DRY_RUN = 1000  # events and dead letters of the type
AIM_MS = 300.0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="default: SQLite in a temporary folder")
    parser.add_argument("--repeat", type=int, default=50, help="samples per path (default 50)")
    return parser.parse_args()


def version_schema(number: int) -> dict[str, Any]:
    """The 50-field schema, open at the top, with ``number`` optional notes added (v1 has one)."""
    schema = copy.deepcopy(bench_schema())
    schema.pop("additionalProperties", None)
    for extra in range(1, number + 1):
        schema["properties"][f"note_{extra}"] = {"type": "string", "maxLength": 200}
    return schema


def _setup(database_url: str, redis_url: str, var_dir: str) -> Any:
    """Production settings on the bench's database, the demo data, and the type with its 20 versions."""
    demo_ready(database_url, redis_url, var_dir)
    from django.core.management import call_command

    from busapp.actions.registry import event_type_create, schema_version_create, topic_create

    call_command("collectstatic", interactive=False, verbosity=0)  # DEBUG=0 serves the hashed manifest's names
    from busapp.models import CompatibilityMode, CompatibilityPolicy

    topic = topic_create(name=TOPIC, actor="bench", description="The registry benchmark's topic.")
    event_type = event_type_create(topic=topic, name=EVENT_TYPE, actor="bench")
    event_type.compatibility_mode = CompatibilityMode.FULL_TRANSITIVE
    event_type.compatibility_policy = CompatibilityPolicy.LENIENT
    event_type.save()
    for number in range(1, VERSIONS + 1):
        schema_version_create(event_type=event_type, schema=version_schema(number), actor="bench")
    _history(event_type)
    return event_type


def _history(event_type: Any) -> None:
    """1,000 accepted events and 1,000 open dead letters of the type, for the dry run to read."""
    from busapp.actions.publishing import event_publish_batch

    payloads = [_varied(number) for number in range(DRY_RUN)]
    accepted = event_publish_batch(
        topic=TOPIC, items=[{"type": EVENT_TYPE, "payload": payload} for payload in payloads], actor="bench"
    )
    refused = event_publish_batch(
        topic=TOPIC,
        items=[{"type": EVENT_TYPE, "payload": {**payload, "tax_year": "2025"}} for payload in payloads],
        actor="bench",
    )
    assert (len(accepted.events), len(refused.dead_letters)) == (DRY_RUN, DRY_RUN)


def _varied(number: int) -> dict[str, Any]:
    """The form bench's payload with its own case id, preparer, income and dates: no two events alike."""
    payload = copy.deepcopy(bench_payload())
    payload["case_id"] = f"AM-{number:06d}"
    payload["preparer_ptin"] = f"P{number:08d}"
    payload["gross_income"] = round(50_000 + number * 13.37, 2)
    payload["effective_date"] = f"2026-{1 + number % 12:02d}-{1 + number % 28:02d}"
    return payload


def _without_multiple_of(schema: Any) -> Any:
    """The schema without ``multipleOf`` anywhere (for the baseline, which cannot read a fractional one)."""
    if isinstance(schema, dict):
        return {key: _without_multiple_of(value) for key, value in schema.items() if key != "multipleOf"}
    if isinstance(schema, list):
        return [_without_multiple_of(value) for value in schema]
    return schema


def _ms(call: Callable[[], Any]) -> float:
    """Wall milliseconds of one call."""
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    """Set up, check each path once for its answer, then time them taking turns."""
    arguments = _arguments()
    redis_server = RedisServer()
    redis_server.start()
    workdir = tempfile.mkdtemp(prefix="hms-bench-registry-")
    database_url = arguments.database_url or f"sqlite:///{workdir}/bench.sqlite3"
    postgres = database_url.startswith("postgres")
    if postgres:
        _postgres_database(database_url, create=True)
    try:
        event_type = _setup(database_url, redis_server.url(0), workdir)
        import jsoncompat
        from django.conf import settings
        from django.contrib.auth.models import User
        from django.db import connection
        from django.test import Client

        from busapp.actions.registry import schema_version_check
        from busapp.compatibility import mode_findings
        from busapp.models import CompatibilityMode, CompatibilityPolicy, SchemaVersion
        from busapp.version_drafts import version_draft_check

        candidate = version_schema(VERSIONS + 1)
        earlier = [
            (version.version, version.schema)
            for version in SchemaVersion.objects.filter(event_type=event_type).order_by("-version")
        ]
        assert len(earlier) == VERSIONS
        # jsoncompat refuses a fractional multipleOf (the amounts' 0.01): its copies go without it.
        texts = [json.dumps(_without_multiple_of(schema)) for _, schema in earlier]
        candidate_text = json.dumps(_without_multiple_of(candidate))

        def check() -> int:
            return schema_version_check(event_type=event_type, schema=candidate, compatibility="backward")

        def whole() -> Any:
            return version_draft_check(event_type=event_type, schema=candidate)

        client = Client(HTTP_HOST=settings.ALLOWED_HOSTS[0], secure=True)
        client.force_login(User.objects.get(username="admin"))
        page = f"/topics/{TOPIC}/types/{EVENT_TYPE}/versions/new/"
        posted = {"schema": json.dumps(candidate, indent=2), "action": "check"}

        def checked_page() -> Any:
            return client.post(page, posted)

        def compare() -> list[Any]:
            return mode_findings(
                candidate,
                earlier,
                mode=CompatibilityMode.FULL_TRANSITIVE,
                policy=CompatibilityPolicy.LENIENT,
            )

        def oracle() -> list[bool]:
            return [jsoncompat.check_compat(old, candidate_text, "both") for old in texts]

        assert check() == VERSIONS + 1
        found = whole()
        assert found.against is not None
        assert (found.invalid, found.findings, found.against.version) == ("", [], VERSIONS)
        assert [row.path for row in found.diff] == [f"/properties/note_{VERSIONS + 1}"]
        assert found.dry_run is not None
        assert (found.dry_run.events, found.dry_run.events_refused) == (DRY_RUN, 0)
        assert (found.dry_run.letters, found.dry_run.letters_passing) == (DRY_RUN, 0)
        answer = checked_page()
        assert answer.status_code == 200, answer.status_code
        assert b"compatible</span> under FULL_TRANSITIVE" in answer.content
        assert b"The publish form under v21" in answer.content
        assert compare() == []
        breaking = {**candidate, "required": [*candidate["required"], "note_21"]}
        assert mode_findings(breaking, earlier, mode=CompatibilityMode.FULL_TRANSITIVE), "a break went unseen"
        paths = [
            ("POST the new-version page's Check (the whole check, rendered)", checked_page),
            ("version_draft_check (validity, compatibility, diff, dry run)", whole),
            ("schema_version_check (what a save runs: validity + compatibility)", check),
            ("  of which mode_findings alone (FULL_TRANSITIVE, LENIENT)", compare),
            ("baseline: jsoncompat.check_compat x 20 (a verdict, no reasons)", oracle),
        ]
        for _ in range(3):
            for _, call in paths:
                call()
        samples: dict[str, list[float]] = {name: [] for name, _ in paths}
        for _ in range(arguments.repeat):
            for name, call in paths:
                samples[name].append(_ms(call))

        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
        print(f"database: {connection.vendor} ({connection.settings_dict['NAME']})")
        print(f"schema: 50 fields + up to {VERSIONS + 1} optional notes, {len(json.dumps(candidate)):,} bytes of JSON")
        print(f"{'path':<66}{'p50 ms':>8}{'p95 ms':>8}{'max ms':>8}  aim p95 < {AIM_MS:.0f} ms")
        for name, _ in paths:
            times = samples[name]
            verdict = "" if name.startswith(("baseline", " ")) else ("  met" if _p(times, 95) < AIM_MS else "  NOT met")
            print(f"{name:<66}{_p(times, 50):>8.1f}{_p(times, 95):>8.1f}{max(times):>8.1f}{verdict}")
        print(f"  ({arguments.repeat} samples each; the dry run reads {DRY_RUN:,} events and {DRY_RUN:,} dead letters)")
    finally:
        redis_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if postgres:
            from django.db import connections

            connections.close_all()
            _postgres_database(database_url, create=False)


if __name__ == "__main__":
    main()
