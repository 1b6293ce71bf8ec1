"""Subscribers' receipts through the receipts stream, drift shown on an open page, and the cost to a publish.

Run: ``.venv/bin/python bench/subscribers.py`` (SQLite in a temporary folder) or
``.venv/bin/python bench/subscribers.py --database-url postgres://postgres@127.0.0.1:5432/hms_bench_subs``
(the database is created afresh, and dropped at the end). Issue 18's sizes by default: 20
subscribers on 5 topics, 1,000 events/s for 60 s; ``--seconds``, ``--rate``, ``--subscribers``
and ``--topics`` shorten it. It starts its own redis-server on a free port, production settings
(``DEBUG=0``), and as subprocesses ``manage.py bus_worker`` (and, for drift, uvicorn as the
Procfile runs it).

Parts (``--parts``, all by default):

- publish: ``bench/publish.py``'s single and batch paths (its functions, imported), in slices
  taken turn about: without subscribers (nobody follows ``tax-policy``), then with the 20
  following it and a receipts generator posting 20 receipts per event, while a bus worker
  (receipts reader and drift job included) records them. After each slice with subscribers the
  next waits until the worker has recorded every receipt, so a slice without pays for none.
- receipts: events published at ``--rate`` (``event_publish_batch`` every 100 ms, one call a
  topic) while the generator, a separate process reading the topic streams as the subscribers
  would, posts one receipt per event per follower on ``hms:receipts`` (pipelined ``XADD``); one
  bus worker, then ``--workers`` at once, record them. The rows in the Receipt table are read
  every second: receipts recorded per second, the backlog (the workers' group lag and pending
  entries) when publishing stops and after a bounded drain, each worker's CPU and peak memory.
  The generator stands for the 20 subscriber processes (``hms_subscriber``), which are not run.
- profile: a copy of the receipts reader's step (``receipts_stream_record``, its commit hook
  telling the pages included; no Redis read or ack) under cProfile in this process, on
  batches of ``READ_COUNT`` receipts for fresh events: where a batch's time goes.
- drift: uvicorn and one bus worker; K websocket clients signed in as the demo admin, on
  ``/ws/subscribers/`` for every topic. Each follow's deadline is ``--deadline`` s; each round
  publishes one event of a type kept for this part on every topic, the punctual subscribers
  post their receipt at once, ``--late`` of them do not. Latency = a drift item's arrival on a
  socket - (the event's ``published_at`` + the deadline), for every (drift, client). The late
  ones then post theirs, and the round waits until the drifts are shown cleared.

Nothing here asserts a time: the figures are printed beside the aims of issue 18.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime as dt
import io
import json
import math
import os
import platform
import pstats
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
sys.path.insert(0, str(ROOT))

from bench.api import _postgres_cpu_seconds  # noqa: E402
from bench.history import _postgres_database  # noqa: E402
from bench.live import (  # noqa: E402
    _answers,
    _cpu_seconds,
    _environment,
    _p,
    _revision,
    _rss_kib,
    _start_uvicorn,
    _start_worker,
)
from tests.support import OutputWatcher, RedisServer, free_port, wait_for  # noqa: E402

PASSWORD = "bench-password-123"
VIEWER = "admin"  # the demo admin may view every topic
ACTOR = "bench"
SCHEMA = {
    key: value
    for key, value in json.loads((ROOT / "schemas/tax_policy.json").read_text()).items()
    if not key.startswith("x-hms-")
}
FIRST_TOPIC, FIRST_TYPE = "tax-policy", "tax_policy.updated"  # load_demo's; bench/publish.py publishes there
RECEIPTS_STREAM = "hms:receipts"
WORKERS_GROUP = "hms-bus-admin"
TICK = 0.1  # the receipts part's publisher: one batch per topic this often
DRAIN_SECONDS = 60.0  # after publishing stops, the workers' backlog is watched at most this long
AIM_RECEIPTS = 20_000
AIM_DRIFT_P99_MS = 2000.0
AIM_PUBLISH_COST = 0.05


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--database-url", help="default: SQLite in a temporary folder; a PostgreSQL database is created afresh"
    )
    parser.add_argument("--parts", default="publish,receipts,profile,drift", help="which parts, comma-separated")
    parser.add_argument("--seconds", type=float, default=60.0, help="receipts part: publishing time per run")
    parser.add_argument("--rate", type=int, default=1000, help="receipts part: events/s over all topics")
    parser.add_argument("--subscribers", type=int, default=20, help="subscribers, each following every topic")
    parser.add_argument("--topics", type=int, default=5, help="topics (tax-policy and bench.subs-NN)")
    parser.add_argument("--workers", type=int, default=2, help="receipts part: bus workers at once (also run with 1)")
    parser.add_argument("--drain", type=float, default=DRAIN_SECONDS, help="receipts part: backlog watched at most")
    parser.add_argument("--single", type=int, default=2000, help="publish part: single publishes per mode")
    parser.add_argument("--batches", type=int, default=10, help="publish part: batches of 1,000 per mode")
    parser.add_argument("--rounds", type=int, default=10, help="publish part: slices each mode takes turn about")
    parser.add_argument("--profile-batches", type=int, default=5, help="profile part: batches of 2,000 receipts")
    parser.add_argument("--clients", type=int, default=5, help="drift part: websocket clients")
    parser.add_argument("--drift-rounds", type=int, default=10, help="drift part: rounds (one event per topic each)")
    parser.add_argument("--deadline", type=int, default=2, help="drift part: every follow's deadline, s (min 1)")
    parser.add_argument("--late", type=int, default=5, help="drift part: subscribers that send no receipt in time")
    parser.add_argument("--child-generator", help=argparse.SUPPRESS)  # internal: the receipts generator process
    return parser.parse_args()


# Setup.


def _topic_names(count: int) -> list[str]:
    """tax-policy (the demo's, where bench/publish.py publishes), then bench.subs-01 ..."""
    return [FIRST_TOPIC] + [f"bench.subs-{n:02d}" for n in range(1, count)]


def _type_names(topic: str) -> tuple[str, str]:
    """A topic's loaded type (the receipts and publish parts) and the type the drift part keeps for itself."""
    base = "tax_policy" if topic == FIRST_TOPIC else topic.replace(".", "_").replace("-", "_")
    return f"{base}.updated", f"{base}.deadline"


def _subscriber_names(count: int) -> list[str]:
    return [f"bench-sub-{n:02d}" for n in range(1, count + 1)]


def _setup(environment: dict[str, str], topics: int, subscribers: int) -> None:
    """Migrate, the demo data, the topics with both their types, the subscribers following every topic."""
    os.environ.update(environment)
    import django

    django.setup()
    from django.core.management import call_command

    from busapp.actions.registry import event_type_create, schema_version_create, topic_create
    from busapp.actions.subscribers import subscriber_create, subscriber_follow
    from busapp.models import EventType, Topic

    call_command("migrate", verbosity=0)
    with open(os.devnull, "w") as quiet:
        call_command("load_demo", password=PASSWORD, stdout=quiet)
    for name in _topic_names(topics):
        topic = Topic.objects.filter(name=name).first() or topic_create(
            name=name, description="bench/subscribers.py", actor=ACTOR
        )
        for type_name in _type_names(name):
            if not EventType.objects.filter(topic=topic, name=type_name).exists():
                kind = event_type_create(topic=topic, name=type_name, actor=ACTOR)
                schema_version_create(event_type=kind, schema=SCHEMA, actor=ACTOR)
    for name in _subscriber_names(subscribers):
        subscriber = subscriber_create(name=name, actor=ACTOR, description="bench/subscribers.py")
        for topic in Topic.objects.filter(name__in=_topic_names(topics)):
            subscriber_follow(subscriber=subscriber, topic=topic, actor=ACTOR)


def _follows_set(*, topic: str, names: list[str], on: bool) -> None:
    """Make the subscribers follow the topic (``on``) or not, through the actions."""
    from busapp.actions.subscribers import subscriber_follow, subscriber_unfollow
    from busapp.models import Subscriber, SubscriberFollow, Topic

    row = Topic.objects.get(name=topic)
    for subscriber in Subscriber.objects.filter(name__in=names):
        follows = SubscriberFollow.objects.filter(subscriber=subscriber, topic=row).exists()
        if on and not follows:
            subscriber_follow(subscriber=subscriber, topic=row, actor=ACTOR)
        elif not on and follows:
            subscriber_unfollow(subscriber=subscriber, topic=row, actor=ACTOR)


# The receipts generator: the subscribers' side, a process of its own.


def _stream_id(text: str) -> tuple[int, int]:
    millis, _, sequence = text.partition("-")
    return int(millis), int(sequence or 0)


def _last_entry_id(bus: Any, stream: str) -> str:
    """The id of the stream's newest entry; ``0-0`` while it does not exist (every entry it will hold is new)."""
    import redis

    try:
        return str(bus.xinfo_stream(stream)["last-generated-id"].decode())
    except redis.ResponseError:
        return "0-0"


def _child_generator(spec: str) -> None:
    """Read the topic streams as the subscribers would; post a receipt per event per subscriber while told to.

    stdin: ``on <id>`` posts for entries after that stream id, ``off <id>`` stops after it
    (each answered ``ok``), ``stop`` prints what it posted and its CPU as one JSON line.
    """
    import redis

    options = json.loads(spec)
    bus: Any = redis.Redis.from_url(options["redis_url"])
    positions = {stream: _last_entry_id(bus, stream) for stream in options["streams"]}
    # Posting windows (after, until]: a receipt per subscriber for each entry of any stream inside one.
    windows: list[list[Any]] = []
    lock = threading.Lock()
    stopping = threading.Event()

    def commands() -> None:
        for line in sys.stdin:
            word, _, argument = line.strip().partition(" ")
            with lock:
                if word == "on":
                    windows.append([_stream_id(argument), None])
                elif word == "off" and windows:
                    windows[-1][1] = _stream_id(argument)
            if word == "stop":
                break
            print("ok", flush=True)
        stopping.set()

    if options["on"]:
        windows.append([(0, 0), None])
    threading.Thread(target=commands, daemon=True).start()
    names = options["subscribers"]
    posted = 0
    cpu = time.process_time()
    print("ready", flush=True)
    while not stopping.is_set():
        reply = bus.xread(positions, count=2000, block=100)
        pipe = bus.pipeline(transaction=False)
        pending = 0
        for raw_stream, messages in reply or []:
            stream = raw_stream.decode()
            positions[stream] = messages[-1][0].decode()
            with lock:
                spans = [(after, until) for after, until in windows]
            for raw_id, fields in messages:
                at = _stream_id(raw_id.decode())
                if not any(after < at and (until is None or at <= until) for after, until in spans):
                    continue
                event = json.loads(fields[b"event"])["id"]
                for name in names:
                    receipt = f'{{"event":"{event}","subscriber":"{name}","status":"applied","detail":""}}'
                    pipe.execute_command("XADD", RECEIPTS_STREAM, "*", "receipt", receipt)
                pending += len(names)
        if pending:
            pipe.execute()
            posted += pending
    print(json.dumps({"posted": posted, "cpu": time.process_time() - cpu}), flush=True)


class Generator:
    """The receipts generator process, as seen from here."""

    def __init__(self, env: dict[str, str], redis_url: str, topics: list[str], subscribers: list[str], on: bool):
        from busapp.publishing import stream_key

        self.streams = [stream_key(topic) for topic in topics]
        self.redis_url = redis_url
        self.bus = _redis(redis_url)
        spec = {"redis_url": redis_url, "streams": self.streams, "subscribers": subscribers, "on": on}
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--child-generator", json.dumps(spec)],
            cwd=ROOT,
            env={**os.environ, **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._expect("ready")

    def _expect(self, word: str) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if line != word:
            raise RuntimeError(f"the receipts generator said {line!r}, not {word!r}")

    def _say(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def _last_id(self) -> str:
        return max((_last_entry_id(self.bus, stream) for stream in self.streams), key=_stream_id)

    def on(self) -> None:
        """Post receipts for every event put on the streams from now."""
        self._say(f"on {self._last_id()}")
        self._expect("ok")

    def off(self) -> None:
        """Post receipts for every event on the streams until now, none after."""
        self._say(f"off {self._last_id()}")
        self._expect("ok")

    def stop(self) -> dict[str, Any]:
        """Stop it; what it posted and its CPU seconds."""
        try:
            self._say("stop")
            assert self.process.stdout is not None
            line = self.process.stdout.readline()
            self.process.wait(timeout=30)
            return dict(json.loads(line)) if line.strip() else {}
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


# What the workers have to do.


def _backlog(bus: Any) -> tuple[int, int]:
    """The workers' group on the receipts stream: entries not yet read (lag), and read but not acknowledged."""
    if not bus.exists(RECEIPTS_STREAM):
        return 0, 0
    for group in bus.xinfo_groups(RECEIPTS_STREAM):
        if group["name"].decode() == WORKERS_GROUP:
            lag = group.get("lag")
            if lag is None:  # Redis could not tell (entries deleted): the stream's length is the bound
                lag = bus.xlen(RECEIPTS_STREAM)
            return int(lag), int(group["pending"])
    return bus.xlen(RECEIPTS_STREAM), 0


def _receipts_now() -> int:
    """Receipt rows so far (the highest key: exact while nothing is deleted and no insert rolled back)."""
    from django.db.models import Max

    from busapp.models import Receipt

    return Receipt.objects.aggregate(top=Max("pk"))["top"] or 0


def _drained(bus: Any, timeout: float) -> float | None:
    """Wait until the workers' receipts group has nothing unread or unacknowledged; seconds, None if it never did."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if _backlog(bus) == (0, 0):
            return time.monotonic() - start
        time.sleep(0.1)
    return None


def _workers_start(env: dict[str, str], count: int) -> list[OutputWatcher]:
    """``count`` bus workers, each saying it runs."""
    workers = [_start_worker(env, None) for _ in range(count)]
    for worker in workers:
        worker.wait_for_line("running", timeout=60)
    return workers


def _workers_stop(workers: list[OutputWatcher]) -> list[str]:
    """Stop them; the lines they printed that say something went wrong."""
    odd = []
    for worker in workers:
        worker.stop()
        odd += [line for line in worker.lines if "Traceback" in line or "ERROR" in line or "refused" in line]
    return odd


# Part: the cost to a publish.


@dataclass
class PublishCost:
    """Events/s of bench/publish.py's single and batch paths, without and with subscribers."""

    single: dict[str, float] = field(default_factory=dict)
    batch: dict[str, float] = field(default_factory=dict)
    drain_seconds: list[float] = field(default_factory=list)
    receipts_posted: int = 0
    undrained: int = 0


def _publish_part(arguments: argparse.Namespace, env: dict[str, str], redis_url: str) -> PublishCost:
    """Single and batch slices taken turn about, without then with (the order swapped each round) subscribers."""
    from bench.publish import _batch_path, _single_path

    names = _subscriber_names(arguments.subscribers)
    bus = _redis(redis_url)
    cost = PublishCost()
    seconds = {"single off": 0.0, "single on": 0.0, "batch off": 0.0, "batch on": 0.0}
    per_slice = max(1, arguments.single // arguments.rounds)
    batches_per_slice = max(1, arguments.batches // arguments.rounds)
    workers = _workers_start(env, 1)
    generator = Generator(env, redis_url, [FIRST_TOPIC], names, on=False)
    try:
        _follows_set(topic=FIRST_TOPIC, names=names, on=False)
        _single_path(100)  # warm: the compiled validator, connections
        _batch_path(1)
        offset = 0
        for round_number in range(arguments.rounds):
            order = ["off", "on"] if round_number % 2 == 0 else ["on", "off"]
            for path in ("single", "batch"):
                for state in order:
                    _follows_set(topic=FIRST_TOPIC, names=names, on=state == "on")
                    if state == "on":
                        generator.on()
                    if path == "single":
                        seconds[f"single {state}"] += _single_path(per_slice, offset)
                        offset += per_slice
                    else:
                        seconds[f"batch {state}"] += batches_per_slice * 1000 / _batch_path(batches_per_slice)
                    if state == "on":
                        generator.off()
                        time.sleep(0.3)  # the generator reads the stream to the slice's end
                        waited = _drained(bus, 120.0)
                        if waited is None:
                            cost.undrained += 1
                        else:
                            cost.drain_seconds.append(waited)
        rounds = arguments.rounds
        for state in ("off", "on"):
            cost.single[state] = per_slice * rounds / seconds[f"single {state}"]
            cost.batch[state] = batches_per_slice * 1000 * rounds / seconds[f"batch {state}"]
    finally:
        outcome = generator.stop()
        cost.receipts_posted = int(outcome.get("posted", 0))
        _workers_stop(workers)
        _follows_set(topic=FIRST_TOPIC, names=names, on=True)
    return cost


# Part: receipts recorded per second.


@dataclass
class ReceiptsRun:
    """One run of the receipts part."""

    workers: int
    published: int = 0
    publish_seconds: float = 0.0
    late_max: float = 0.0
    posted: int = 0
    recorded_in_window: int = 0
    recorded_total: int = 0
    window_rate: float = 0.0
    steady_rate: float = 0.0  # over the second half of the window
    backlog_at_stop: tuple[int, int] = (0, 0)
    backlog_at_end: tuple[int, int] = (0, 0)
    drain_seconds: float | None = None
    samples: list[tuple[float, int]] = field(default_factory=list)  # (s since start, rows)
    cpu: dict[str, float] = field(default_factory=dict)  # share of one core over the window
    peak_mib: list[float] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)
    odd: list[str] = field(default_factory=list)


def _receipts_run(arguments: argparse.Namespace, env: dict[str, str], redis_url: str, workers: int) -> ReceiptsRun:
    """Publish at the rate while the generator posts receipts and ``workers`` bus workers record them."""
    from django.db import connection

    from busapp.actions.publishing import event_publish_batch

    run = ReceiptsRun(workers)
    topics = _topic_names(arguments.topics)
    types = {topic: _type_names(topic)[0] for topic in topics}
    bus = _redis(redis_url)
    refused_before = {key.decode(): int(value) for key, value in bus.hgetall("hms:receipts:refused").items()}
    watchers = _workers_start(env, workers)
    generator = Generator(env, redis_url, topics, _subscriber_names(arguments.subscribers), on=True)
    pids = {f"worker {n + 1}": watcher.process.pid for n, watcher in enumerate(watchers)}
    pids["generator"] = generator.process.pid
    try:
        per_call = max(1, round(arguments.rate * TICK / len(topics)))
        ticks = max(1, round(arguments.seconds / TICK))
        rows_before = _receipts_now()
        cpu_before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        cpu_before["bench"] = time.process_time()
        cpu_before["postgres"] = _postgres_cpu_seconds()
        start = time.perf_counter()
        next_sample = start
        for tick in range(ticks):
            late = time.perf_counter() - (start + tick * TICK)
            if late < 0:
                time.sleep(-late)
            run.late_max = max(run.late_max, late)
            for topic in topics:
                items = [{"type": types[topic], "payload": {"standard_deduction": tick}} for _ in range(per_call)]
                run.published += len(event_publish_batch(topic=topic, items=items, actor=ACTOR).events)
            if time.perf_counter() >= next_sample:
                run.samples.append((time.perf_counter() - start, _receipts_now() - rows_before))
                next_sample += 1.0
        run.publish_seconds = time.perf_counter() - start
        time.sleep(0.5)  # the generator reads the last events (it is never more than a read behind)
        stopped = time.perf_counter()
        run.recorded_in_window = _receipts_now() - rows_before
        run.samples.append((stopped - start, run.recorded_in_window))
        run.backlog_at_stop = _backlog(bus)
        wall = stopped - start
        run.cpu = {name: (_cpu_seconds(pid) - cpu_before[name]) / wall for name, pid in pids.items()}
        run.cpu["bench (publisher)"] = (time.process_time() - cpu_before["bench"]) / wall
        if connection.vendor == "postgresql":
            run.cpu["postgres"] = (_postgres_cpu_seconds() - cpu_before["postgres"]) / wall
        run.window_rate = run.recorded_in_window / wall
        half = [sample for sample in run.samples if sample[0] >= wall / 2]
        if len(half) >= 2:
            run.steady_rate = (half[-1][1] - half[0][1]) / (half[-1][0] - half[0][0])
        run.drain_seconds = _drained(bus, arguments.drain)
        run.backlog_at_end = _backlog(bus)
        run.recorded_total = _receipts_now() - rows_before
        run.peak_mib = [_rss_kib(watcher.process.pid, "VmHWM") / 1024 for watcher in watchers]
    finally:
        outcome = generator.stop()
        run.posted = int(outcome.get("posted", 0))
        run.odd = _workers_stop(watchers)
    refused_after = {key.decode(): int(value) for key, value in bus.hgetall("hms:receipts:refused").items()}
    run.refused = {key: value - refused_before.get(key, 0) for key, value in refused_after.items()}
    run.refused = {key: value for key, value in run.refused.items() if value}
    # What the workers left is not the next run's: every run starts with an empty backlog.
    _backlog_drop(bus)
    return run


def _backlog_drop(bus: Any) -> None:
    """Forget what the receipts group has not recorded (a run that could not keep up leaves it)."""
    if bus.exists(RECEIPTS_STREAM):
        bus.delete(RECEIPTS_STREAM)


def _print_receipts_run(run: ReceiptsRun, arguments: argparse.Namespace) -> None:
    print(
        f"  {run.workers} worker(s): published {run.published:,} events in {run.publish_seconds:.1f} s "
        f"({run.published / run.publish_seconds:,.0f}/s, at most {run.late_max * 1000:.0f} ms behind), "
        f"receipts posted {run.posted:,}, recorded {run.window_rate:,.0f}/s in the window, "
        f"{run.steady_rate:,.0f}/s over its second half",
        flush=True,
    )


# Part: where a batch of receipts goes (cProfile of a copy of the reader's step).


def _profile_part(arguments: argparse.Namespace) -> str:
    """Fresh events, and for each ``READ_COUNT`` receipts made as stream entries; the step under cProfile."""
    from busapp.actions.publishing import event_publish_batch
    from busapp.actions.receipts import receipts_stream_record
    from busapp.publishing import RECEIPTS_STREAM as STREAM
    from busapp.publishing import StreamEntry
    from busapp.worker.receipts import READ_COUNT

    names = _subscriber_names(arguments.subscribers)
    topics = _topic_names(arguments.topics)
    per_batch = max(1, READ_COUNT // len(names))  # events whose receipts fill one read
    batches: list[list[StreamEntry]] = []
    millis = int(time.time() * 1000)
    sequence = 0
    for number in range(arguments.profile_batches):
        topic = topics[number % len(topics)]
        items = [{"type": _type_names(topic)[0], "payload": {"standard_deduction": n}} for n in range(per_batch)]
        events = event_publish_batch(topic=topic, items=items, actor=ACTOR).events
        entries = []
        for event in events:
            for name in names:
                body = json.dumps({"event": event.envelope_id, "subscriber": name, "status": "applied", "detail": ""})
                sequence += 1
                entries.append(StreamEntry(STREAM, f"{millis}-{sequence}", "", body.encode()))
        batches.append(entries)
    wait_until = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
    receipts_stream_record(batches[0][:1], wait_until=wait_until)  # warm
    profiler = cProfile.Profile()
    timings = []
    recorded = 0
    for entries in batches:
        start = time.perf_counter()
        profiler.enable()
        outcome = receipts_stream_record(entries, wait_until=wait_until)  # its commit hook tells the pages
        profiler.disable()
        timings.append(time.perf_counter() - start)
        recorded += len(outcome.recorded)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("cumulative").print_stats(28)
    stats.sort_stats("tottime").print_stats(15)
    receipts = sum(len(entries) for entries in batches)
    mean = sum(timings) / len(timings)
    head = (
        f"profile: {len(batches)} batches of {len(batches[0]):,} receipts ({recorded:,} recorded), "
        f"{mean * 1000:.0f} ms a batch under cProfile, {receipts / sum(timings):,.0f} receipts/s "
        "(cProfile slows Python-heavy code; the ratios between entries are what it tells)\n"
    )
    return head + _trimmed(text.getvalue())


def _trimmed(report: str) -> str:
    """The profile's tables without the blank lines and the file header pstats prints."""
    lines = [line.rstrip() for line in report.splitlines() if line.strip()]
    return "\n".join(line.replace(str(ROOT) + "/", "").replace(sys.prefix, "<venv>") for line in lines)


# Part: drift on an open page.


@dataclass
class SubscribersClient:
    """One open subscribers page: its socket, acknowledging every frame, noting when each drift item came."""

    url: str
    origin: str
    cookie: str
    topics: list[str]
    opened: dict[tuple[str, str], float] = field(default_factory=dict)  # (subscriber, event) -> arrival
    cleared: dict[tuple[str, str], float] = field(default_factory=dict)
    receipts: int = 0
    skipped: int = 0
    frames: int = 0
    socket: Any = None
    task: asyncio.Task[None] | None = None
    closed: str = ""

    async def open(self) -> None:
        """Connect with the session cookie and an allowed Origin, subscribe to every topic."""
        from websockets.asyncio.client import connect
        from websockets.typing import Origin

        self.socket = await connect(
            self.url, origin=Origin(self.origin), additional_headers={"Cookie": self.cookie}, max_size=None
        )
        await self.socket.send(json.dumps({"action": "subscribe", "topics": self.topics}))
        reply = json.loads(await asyncio.wait_for(self.socket.recv(), 20))
        if reply != {"type": "subscribed", "topics": sorted(self.topics)}:
            raise RuntimeError(f"subscribe answered {reply}")
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in self.socket:
                arrived = time.time()
                frame = json.loads(message)
                if frame.get("type") != "subscribers":
                    continue
                await self.socket.send(json.dumps({"action": "ack", "seq": frame["seq"]}))
                self.frames += 1
                self.skipped += frame["skipped"]
                for item in frame["items"]:
                    if item["kind"] == "receipt":
                        self.receipts += 1
                        continue
                    seen = self.opened if item["state"] == "open" else self.cleared
                    seen.setdefault((item["subscriber"], item["event"]), arrived)
        except ConnectionClosed as closed:
            self.closed = str(closed)

    async def close(self) -> None:
        """Close the socket and wait for the reader."""
        if self.socket is not None:
            await self.socket.close()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


@dataclass
class DriftResult:
    """What the drift part measured."""

    latencies: list[float] = field(default_factory=list)  # ms, every (drift, client)
    expected: int = 0  # (drift, client) pairs that should have arrived
    missing: int = 0
    rounds: int = 0
    skipped: int = 0
    clear_ms: list[float] = field(default_factory=list)  # late receipts posted -> cleared shown (client 0)
    cpu: dict[str, float] = field(default_factory=dict)
    odd: list[str] = field(default_factory=list)


def _drift_publish(topics: list[str]) -> dict[str, tuple[str, float]]:
    """One event of each topic's drift type; by topic, its envelope id and ``published_at`` (epoch s)."""
    from busapp.actions.publishing import event_publish
    from busapp.models import Event

    published = {}
    for topic in topics:
        event = event_publish(
            topic=topic, event_type=_type_names(topic)[1], payload={"standard_deduction": 1}, actor=ACTOR, source="api"
        )
        row = Event.objects.only("published_at").get(pk=event.pk)
        assert row.published_at is not None, "the drift part's events must be published"
        published[topic] = (event.envelope_id, row.published_at.timestamp())
    return published


def _drift_deadlines(names: list[str], topics: list[str], deadline: int) -> None:
    """Every follow's deadline to ``deadline`` s, through the action."""
    from busapp.actions.subscribers import subscriber_follow
    from busapp.models import SubscriberFollow

    for follow in SubscriberFollow.objects.filter(subscriber__name__in=names, topic__name__in=topics).select_related(
        "subscriber", "topic"
    ):
        if follow.apply_deadline != deadline:
            subscriber_follow(subscriber=follow.subscriber, topic=follow.topic, actor=ACTOR, apply_deadline=deadline)


def _post_receipts(bus: Any, events: list[str], names: list[str]) -> None:
    pipe = bus.pipeline(transaction=False)
    for event in events:
        for name in names:
            receipt = json.dumps({"event": event, "subscriber": name, "status": "applied", "detail": ""})
            pipe.xadd(RECEIPTS_STREAM, {"receipt": receipt})
    pipe.execute()


async def _until(condition: Any, seconds: float) -> None:
    """Poll every 20 ms until the condition holds, ``seconds`` at most."""
    for _ in range(math.ceil(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)


async def _drift_rounds(arguments: argparse.Namespace, port: int, redis_url: str, pids: dict[str, int]) -> DriftResult:
    """Open the clients, run the rounds, close the clients."""
    from asgiref.sync import sync_to_async

    from tests.support import session_cookie

    result = DriftResult()
    topics = _topic_names(arguments.topics)
    names = _subscriber_names(arguments.subscribers)
    late, punctual = names[: arguments.late], names[arguments.late :]
    cookie = (await sync_to_async(session_cookie)(VIEWER)).decode()
    url, origin = f"ws://127.0.0.1:{port}/ws/subscribers/", f"http://127.0.0.1:{port}"
    clients = [SubscribersClient(url, origin, cookie, topics) for _ in range(arguments.clients)]
    bus = _redis(redis_url)
    in_db = sync_to_async(_drift_publish)
    try:
        await asyncio.gather(*(client.open() for client in clients))
        cpu_before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        wall = time.perf_counter()
        for _ in range(arguments.drift_rounds):
            await asyncio.sleep(random.uniform(0, 1))  # deadlines fall anywhere in the drift job's second
            published = await in_db(topics)
            events = [event for event, _ in published.values()]
            _post_receipts(bus, events, punctual)
            due = {event: at + arguments.deadline for event, at in published.values()}
            keys = [(name, event) for name in late for event in events]
            await _until(lambda keys=keys: all(k in c.opened for c in clients for k in keys), arguments.deadline + 15)
            for client in clients:
                for key in keys:
                    result.expected += 1
                    if key in client.opened:
                        result.latencies.append((client.opened[key] - due[key[1]]) * 1000)
                    else:
                        result.missing += 1
            posted = time.time()
            _post_receipts(bus, events, late)
            await _until(lambda keys=keys: all(k in clients[0].cleared for k in keys), 15)
            result.clear_ms += [(clients[0].cleared[key] - posted) * 1000 for key in keys if key in clients[0].cleared]
            result.rounds += 1
        elapsed = time.perf_counter() - wall
        result.cpu = {name: (_cpu_seconds(pid) - cpu_before[name]) / elapsed for name, pid in pids.items()}
    finally:
        await asyncio.gather(*(client.close() for client in clients))
    result.skipped = sum(client.skipped for client in clients)
    result.latencies.sort()
    result.clear_ms.sort()
    return result


def _drift_part(arguments: argparse.Namespace, env: dict[str, str], redis_url: str) -> DriftResult:
    """Start uvicorn and a bus worker, shorten the deadlines, run shortened, the rounds."""
    names = _subscriber_names(arguments.subscribers)
    topics = _topic_names(arguments.topics)
    _drift_deadlines(names, topics, arguments.deadline)
    port = free_port()
    web = _start_uvicorn(env, port)
    workers: list[OutputWatcher] = []
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}"), timeout=30, what="uvicorn to answer")
        workers = _workers_start(env, 1)
        pids = {"uvicorn": web.process.pid, "worker": workers[0].process.pid}
        result = asyncio.run(_drift_rounds(arguments, port, redis_url, pids))
    finally:
        web.stop()
        result_odd = _workers_stop(workers)
    result.odd = result_odd + [line for line in web.lines if "Traceback" in line or "ERROR" in line]
    return result


# The report.


def _print_publish(cost: PublishCost, arguments: argparse.Namespace) -> None:
    print()
    print(
        "cost to a publish (bench/publish.py's paths, slices turn about; 'with': "
        f"{arguments.subscribers} subscribers follow tax-policy and post a receipt per event, "
        "a bus worker records them):"
    )
    print(f"{'path':<36}{'without':>10}{'with':>10}{'with/without':>14}")
    for name, rates in (("single: event_publish", cost.single), ("batch: event_publish_batch, 1,000", cost.batch)):
        ratio = rates["on"] / rates["off"]
        verdict = "within 5%" if ratio >= 1 - AIM_PUBLISH_COST else "NOT within 5%"
        print(f"{name:<36}{rates['off']:>10,.0f}{rates['on']:>10,.0f}{ratio:>13.3f}x  {verdict}")
    drains = sorted(cost.drain_seconds)
    if drains:
        print(
            f"receipts posted in the 'with' slices: {cost.receipts_posted:,}; the worker recorded each slice's in "
            f"{_p(drains, 50):.1f} s (median) to {drains[-1]:.1f} s after it; slices not drained in 120 s: "
            f"{cost.undrained}"
        )


def _print_receipts(runs: list[ReceiptsRun], arguments: argparse.Namespace) -> None:
    print()
    print(
        f"receipts: {arguments.subscribers} subscribers x {arguments.topics} topics, {arguments.rate:,} events/s "
        f"for {arguments.seconds:g} s = {arguments.rate * arguments.subscribers:,} receipts/s offered"
    )
    header = (
        f"{'workers':>7} {'events/s':>9} {'posted':>10} {'recorded/s':>11} {'2nd half/s':>11} "
        f"{'backlog at stop':>16} {'drained s':>10} {'backlog at end':>15} {'recorded':>10}"
    )
    print(header)
    for run in runs:
        stop = f"{run.backlog_at_stop[0]:,}+{run.backlog_at_stop[1]:,}"
        end = f"{run.backlog_at_end[0]:,}+{run.backlog_at_end[1]:,}"
        drained = f"{run.drain_seconds:.1f}" if run.drain_seconds is not None else f">{arguments.drain:g}"
        print(
            f"{run.workers:>7} {run.published / run.publish_seconds:>9,.0f} {run.posted:>10,} {run.window_rate:>11,.0f}"
            f" {run.steady_rate:>11,.0f} {stop:>16} {drained:>10} {end:>15} {run.recorded_total:>10,}"
        )
    print("(backlog: entries not yet read by the workers' group + read and not acknowledged)")
    names = sorted({name for run in runs for name in run.cpu})
    print(f"{'CPU, % of one core':<22}" + "".join(f"{name:>19}" for name in names) + f"{'peak MiB (VmHWM)':>20}")
    for run in runs:
        label = f"{run.workers} worker(s)"
        shares = "".join(f"{run.cpu[name] * 100:>19.0f}" if name in run.cpu else f"{'-':>19}" for name in names)
        print(f"{label:<22}{shares}{', '.join(f'{peak:.0f}' for peak in run.peak_mib):>20}")
    for run in runs:
        print(f"  {run.workers} worker(s), rows each second: " + ", ".join(f"{rows:,}" for _, rows in run.samples[:80]))
        if run.refused:
            print(f"  refused by the workers: {run.refused}")
        if run.odd:
            print(f"  the workers printed ({len(run.odd)} lines): " + " | ".join(run.odd[:5]))
    best = max((run.steady_rate for run in runs), default=0.0)
    offered = arguments.rate * arguments.subscribers
    met = all(run.backlog_at_stop[0] < offered for run in runs[-1:]) and best >= 0.95 * offered
    print(
        f"aim: {AIM_RECEIPTS:,} receipts/s sustained ({offered:,} offered here): "
        f"{'met' if met else 'NOT met'}, best {best:,.0f}/s sustained"
    )


def _print_drift(result: DriftResult, arguments: argparse.Namespace) -> None:
    print()
    latencies = result.latencies
    print(
        f"drift: {arguments.clients} clients on /ws/subscribers/, deadline {arguments.deadline} s, "
        f"{result.rounds} rounds x {arguments.topics} topics x {arguments.late} late subscribers"
    )
    print(f"{'samples':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} {'min ms':>8} {'missing':>8}")
    print(
        f"{len(latencies):>8} {_p(latencies, 50):>8.0f} {_p(latencies, 95):>8.0f} {_p(latencies, 99):>8.0f} "
        f"{(latencies[-1] if latencies else math.nan):>8.0f} {(latencies[0] if latencies else math.nan):>8.0f} "
        f"{result.missing:>8}"
    )
    print("(deadline = the event's published_at + the follow's deadline -> the drift item on the socket)")
    clear = result.clear_ms
    if clear:
        print(f"late receipts posted -> drift shown cleared: p50 {_p(clear, 50):.0f} ms, max {clear[-1]:.0f} ms")
    print("CPU, % of one core: " + ", ".join(f"{name} {share * 100:.0f}" for name, share in result.cpu.items()))
    if result.skipped:
        print(f"items skipped by the sockets' buffers: {result.skipped}")
    if result.odd:
        print("the processes printed: " + " | ".join(result.odd[:5]))
    p99 = _p(latencies, 99)
    met = p99 < AIM_DRIFT_P99_MS and result.missing == 0
    print(f"aim: p99 under {AIM_DRIFT_P99_MS / 1000:.0f} s: {'met' if met else 'NOT met'}, p99 {p99:.0f} ms")


def main() -> None:
    """Set up, run the parts asked for, print their figures; every process started is stopped."""
    arguments = _arguments()
    if arguments.child_generator:
        _child_generator(arguments.child_generator)
        return
    parts = set(arguments.parts.split(","))
    redis_server = RedisServer()
    workdir = tempfile.mkdtemp(prefix="hms-bench-subs-")
    database_url = arguments.database_url or f"sqlite:///{workdir}/bench.sqlite3"
    postgres = database_url.startswith("postgres")
    try:
        redis_server.start()
        if postgres:
            _postgres_database(database_url, create=True)
        env = _environment(database_url, redis_server.url(0), workdir)
        env["LOG_LEVEL"] = "WARNING"
        _setup(env, arguments.topics, arguments.subscribers)
        env = {**os.environ, **env}
        from django.db import connection

        print(f"database: {connection.vendor}; redis: own redis-server on {redis_server.url(0)}", flush=True)
        cost = runs = profile = drift = None
        if "publish" in parts:
            print("publish part ...", flush=True)
            cost = _publish_part(arguments, env, redis_server.url(0))
            _print_publish(cost, arguments)
        if "receipts" in parts:
            print("receipts part ...", flush=True)
            runs = []
            for count in sorted({1, arguments.workers}):
                runs.append(_receipts_run(arguments, env, redis_server.url(0), count))
                _print_receipts_run(runs[-1], arguments)
        if "profile" in parts:
            print("profile part ...", flush=True)
            profile = _profile_part(arguments)
        if "drift" in parts:
            print("drift part ...", flush=True)
            connection.close()
            drift = _drift_part(arguments, env, redis_server.url(0))
        print()
        print(
            f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}; code: {_revision()}"
        )
        print(f"database: {connection.vendor}; load average at the end: {os.getloadavg()[0]:.2f}")
        if cost is not None:
            _print_publish(cost, arguments)
        if runs is not None:
            _print_receipts(runs, arguments)
        if profile is not None:
            print()
            print(profile)
        if drift is not None:
            _print_drift(drift, arguments)
    finally:
        redis_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(redis_server.workdir, ignore_errors=True)
        if postgres:
            from django.db import connections

            connections.close_all()
            _postgres_database(database_url, create=False)


if __name__ == "__main__":
    main()
