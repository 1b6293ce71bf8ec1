"""A new schema version's check: validity and compatibility of a 50-field schema against 20 versions (FULL_TRANSITIVE).

Run: ``.venv/bin/python bench/registry.py`` (SQLite in a temporary folder) or
``.venv/bin/python bench/registry.py --database-url postgres://postgres@127.0.0.1:5432/hms_bench_registry``
(created, then dropped at the end; the bench starts its own redis-server, as the others do).

Setup: production settings, ``migrate``, ``load_demo``; the topic ``bench.registry`` and the
type ``bench_form.amended`` in mode FULL_TRANSITIVE, policy LENIENT; 20 versions made through
``schema_version_create``, each the publish-form bench's 50-field schema (``bench/forms.py``),
left open at the top, with one more optional property than the one before (compatible both
ways under LENIENT, so each is saved).

Measured, each sample warm, the paths taking turns:
- ``schema_version_check`` of version 21 as the registry runs it: Draft 2020-12 validity,
  ``$ref``s and patterns checked, the type's versions read, every stored schema loaded for
  ``$ref``s, and ``busapp.compatibility.mode_findings`` against the 20 versions both ways;
- ``mode_findings`` alone (the comparison, no database);
- the baseline: ``jsoncompat.check_compat(old, new, "both")`` against the same 20 versions, the
  Rust checker the tests use as an oracle (a verdict per pair, without pointers or reasons; it
  refuses a fractional ``multipleOf``, so its copies of the schemas go without one).
The issue's whole check also holds a diff and a dry run over 1,000 events and 1,000 dead letters;
they are not built yet, so this is the part that exists.
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

from bench.forms import _p, bench_schema, demo_ready  # noqa: E402
from bench.history import _postgres_database  # noqa: E402
from tests.support import RedisServer  # noqa: E402

TOPIC = "bench.registry"
EVENT_TYPE = "bench_form.amended"
VERSIONS = 20
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
    from busapp.actions.registry import event_type_create, schema_version_create, topic_create
    from busapp.models import CompatibilityMode, CompatibilityPolicy

    topic = topic_create(name=TOPIC, actor="bench", description="The registry benchmark's topic.")
    event_type = event_type_create(topic=topic, name=EVENT_TYPE, actor="bench")
    event_type.compatibility_mode = CompatibilityMode.FULL_TRANSITIVE
    event_type.compatibility_policy = CompatibilityPolicy.LENIENT
    event_type.save()
    for number in range(1, VERSIONS + 1):
        schema_version_create(event_type=event_type, schema=version_schema(number), actor="bench")
    return event_type


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
        from django.db import connection

        from busapp.actions.registry import schema_version_check
        from busapp.compatibility import mode_findings
        from busapp.models import CompatibilityMode, CompatibilityPolicy, SchemaVersion

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
        assert compare() == []
        breaking = {**candidate, "required": [*candidate["required"], "note_21"]}
        assert mode_findings(breaking, earlier, mode=CompatibilityMode.FULL_TRANSITIVE), "a break went unseen"
        paths = [
            ("schema_version_check (validity + compatibility, 20 versions)", check),
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
        print(f"  ({arguments.repeat} samples each; diff and dry run not built yet, so not in the check)")
    finally:
        redis_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if postgres:
            from django.db import connections

            connections.close_all()
            _postgres_database(database_url, create=False)


if __name__ == "__main__":
    main()
