"""Publish throughput against the seed's bare path, and the bus worker's tap rate and peak memory.

Run: ``.venv/bin/python bench/publish.py`` (SQLite in a temporary folder) or
``.venv/bin/python bench/publish.py --database-url postgres://postgres@127.0.0.1:5432/hms_bench``.
It starts its own redis-server on a free port, so every path uses the same Redis.

Paths measured:
- seed: the seed chapter's publisher, ``jsonschema.validate`` + ``PUBLISH`` per event (no record, no audit);
- single: ``event_publish`` one event at a time (validation + outbox row + audit entry + MULTI + mark);
- batch: ``event_publish_batch`` with 1,000 events per call;
- tap: ``manage.py bus_worker`` recording external events from a topic stream into history.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.history import _postgres_database  # noqa: E402
from tests.support import RedisServer  # noqa: E402


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--database-url", help="default: SQLite in a temporary folder; a PostgreSQL database is created afresh"
    )
    parser.add_argument("--single", type=int, default=3000, help="events for the seed and single paths")
    parser.add_argument("--rounds", type=int, default=10, help="turns the seed and single paths take about")
    parser.add_argument("--batches", type=int, default=10, help="batch calls of 1,000 events")
    parser.add_argument("--tap", type=int, default=20_000, help="external events for the tap")
    parser.add_argument("--tap-workers", type=int, default=1, help="bus workers tapping at once (also run with 1)")
    return parser.parse_args()


def _setup(database_url: str, redis_url: str) -> None:
    """Point Django at the bench's database and Redis, production settings, and load the demo data."""
    os.environ.update(
        DJANGO_SETTINGS_MODULE="hmsadmin.settings",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        DEBUG="0",
        SECRET_KEY="bench-only-secret-key",
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)
    call_command("load_demo", password="bench-password-123", stdout=open(os.devnull, "w"))  # noqa: SIM115


def _seed_path(redis_url: str, count: int, offset: int = 0) -> float:
    """The seed chapter's publisher.py loop: jsonschema.validate + PUBLISH; seconds for ``count`` events."""
    import jsonschema
    import redis

    bus = redis.Redis.from_url(redis_url)
    schema = json.loads((ROOT / "schemas/tax_policy.json").read_text())
    start = time.perf_counter()
    for n in range(offset, offset + count):
        event = {
            "id": str(uuid.uuid4()),
            "type": "tax_policy.updated",
            "timestamp": time.time(),
            "payload": {"standard_deduction": 15000 + n},
        }
        jsonschema.validate(event["payload"], schema)
        bus.publish("tax-policy", json.dumps(event))
    return time.perf_counter() - start


def _single_path(count: int, offset: int = 0) -> float:
    """event_publish one event at a time; seconds for ``count`` events."""
    from busapp.actions.publishing import event_publish
    from busapp.models import EventStatus

    start = time.perf_counter()
    for n in range(offset, offset + count):
        event = event_publish(
            topic="tax-policy",
            event_type="tax_policy.updated",
            payload={"standard_deduction": 15000 + n},
            actor="bench",
            source="api",
        )
        assert event.status == EventStatus.PUBLISHED
    return time.perf_counter() - start


def _seed_and_single(redis_url: str, count: int, rounds: int) -> tuple[float, float]:
    """Both paths' events/s, taken turn about in ``rounds`` slices so a machine that slows down mid-run slows both."""
    per_round = max(1, count // rounds)
    _seed_path(redis_url, 100)  # imports and connections warm before either is timed
    _single_path(100)
    seed_seconds = single_seconds = 0.0
    for round_number in range(rounds):
        seed_seconds += _seed_path(redis_url, per_round, offset=round_number * per_round)
        single_seconds += _single_path(per_round, offset=round_number * per_round)
    return per_round * rounds / seed_seconds, per_round * rounds / single_seconds


def _batch_path(batches: int) -> float:
    """event_publish_batch with 1,000 events per call, events/s."""
    from busapp.actions.publishing import event_publish_batch

    items = [{"type": "tax_policy.updated", "payload": {"standard_deduction": 15000 + n}} for n in range(1000)]
    start = time.perf_counter()
    for _ in range(batches):
        outcome = event_publish_batch(topic="tax-policy", items=items, actor="bench")
        assert len(outcome.events) == 1000
    return batches * 1000 / (time.perf_counter() - start)


def _tap(database_url: str, redis_url: str, count: int, workers: int = 1) -> tuple[float, float]:
    """Stream ``count`` external events; run ``workers`` bus workers until history holds them: events/s, peak MiB."""
    import redis
    from django.db import connection

    from busapp.models import Event, Source
    from busapp.publishing import stream_key

    bus = redis.Redis.from_url(redis_url)
    bus.delete(stream_key("tax-policy"))  # only the external events below
    Event.objects.filter(source=Source.EXTERNAL).delete()
    pipe = bus.pipeline(transaction=False)
    for n in range(count):
        envelope = {
            "id": str(uuid.uuid4()),
            "type": "tax_policy.updated",
            "timestamp": time.time(),
            "payload": {"standard_deduction": n},
        }
        pipe.xadd(stream_key("tax-policy"), {"event": json.dumps(envelope)})
    pipe.execute()
    connection.close()
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"}
    processes = []
    for _ in range(workers):
        worker = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "bus_worker"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        processes.append(worker)
    for worker in processes:
        assert worker.stdout is not None
        while "running" not in worker.stdout.readline():
            pass
    start = time.perf_counter()
    recorded = 0
    while recorded < count:
        time.sleep(0.05)
        recorded = Event.objects.filter(source=Source.EXTERNAL).count()
    elapsed = time.perf_counter() - start
    peak_kib = max(_peak_kib(worker.pid) for worker in processes)
    for worker in processes:
        worker.terminate()
    for worker in processes:
        worker.wait(timeout=30)
    return count / elapsed, peak_kib / 1024


def _peak_kib(pid: int) -> int:
    """A process's peak resident memory (VmHWM), KiB."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmHWM")).split()[1])


def main() -> None:
    """Run every path once and print the figures with their ratio to the seed's path."""
    arguments = _arguments()
    redis_server = RedisServer()
    redis_server.start()
    workdir = tempfile.mkdtemp(prefix="hms-bench-")
    database_url = arguments.database_url or f"sqlite:///{workdir}/bench.sqlite3"
    if database_url.startswith("postgres"):
        _postgres_database(database_url, create=True)  # a fresh database each run; dropped by the next
    try:
        _setup(database_url, redis_server.url(0))
        seed, single = _seed_and_single(redis_server.url(0), arguments.single, arguments.rounds)
        batch = _batch_path(arguments.batches)
        tap_rate, tap_peak_mib = _tap(database_url, redis_server.url(0), arguments.tap)
        tap_many = None
        if arguments.tap_workers > 1:
            tap_many = _tap(database_url, redis_server.url(0), arguments.tap, arguments.tap_workers)[0]
    finally:
        redis_server.stop()
    from django.db import connection

    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"database: {connection.vendor}; Redis: {redis_server.url(0)} (own redis-server)")
    print()
    print(f"{'path':<58}{'events/s':>10}{'vs seed':>9}")
    rows = [
        ("seed: jsonschema.validate + PUBLISH (baseline)", seed),
        ("single: event_publish (validate, outbox, audit, MULTI)", single),
        ("batch: event_publish_batch, 1,000 per call", batch),
        ("tap: worker records external events into history", tap_rate),
    ]
    for name, rate in rows:
        print(f"{name:<58}{rate:>10,.0f}{rate / seed:>8.2f}x")
    if tap_many is not None:
        name = f"tap, {arguments.tap_workers} workers at once"
        print(f"{name:<58}{tap_many:>10,.0f}{tap_many / seed:>8.2f}x   {tap_many / tap_rate:.2f}x one worker")
    print()
    print(f"worker peak memory (VmHWM) while tapping {arguments.tap:,} events: {tap_peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
