"""The JSON API over loopback: publishes/s and latency, single and batch, against the seed's path; queries per request.

Run: ``.venv/bin/python bench/api.py`` (SQLite in a temporary folder, about 70 s; PostgreSQL about 90 s) or
``.venv/bin/python bench/api.py --database-url postgres://postgres@127.0.0.1:5432/hms_bench_api``
(that database is created, and dropped at the end). ``--quick`` is a smoke run of 2 s a path.

It starts its own redis-server on a free port, migrates the bench's database and loads the demo
data with production settings (``DEBUG=0``), issues a service token scoped to ``tax-policy`` (and
one scoped to 20 topics: 19 more are made, each with an event type and a schema), and starts the
web server as a subprocess with the Procfile's own ``web:`` command line (uvicorn, one process, its
access log on, written to a file) on a free loopback port. No bus worker runs: the API sends its
events to Redis itself.

Clients: asyncio in this process, one persistent keep-alive HTTP/1.1 connection per concurrent
client (a minimal client on asyncio streams, so the load generator takes little of the two cores
it shares with the server), each sending its next request when its answer has arrived:

- single: ``POST /api/topics/tax-policy/events/`` of one event, 201 expected;
- batch: ``POST /api/topics/tax-policy/events/batch/`` of 1,000 events, 200 with all published;
- floor: the single path's request with a malformed token, 401 expected: every middleware and DRF,
  no query, no Redis. What the web stack costs before any work: the most single publishes
  one server process could answer, whatever the publish cost.

Latency: from writing the request to reading the whole answer. Each path runs with 1 and with 8
clients for ``--seconds`` after one second of warm-up. The seed's path, ``jsonschema.validate`` +
``PUBLISH`` per event (``bench/publish.py``'s own loop), runs in this process against the same
Redis before each path and after the last; a path's ratio is to the mean of the runs beside it.
CPU: of the server, redis-server, PostgreSQL (all its processes), this process and the machine.

Then, in this process on the same database and settings: the CPU per event of the actions alone,
through Django and DRF (the test ``Client``), and through the ASGI application (no server); and,
with ``CaptureQueriesContext``, the queries of one single publish and one ``GET /api/topics/``
with the token on 1 topic and the one on 20.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.history import _database_line, _postgres_database, _teardown  # noqa: E402
from bench.live import _answers, _cpu_seconds, _machine_busy_seconds, _p, _revision, _setup  # noqa: E402
from bench.publish import _seed_path  # noqa: E402
from tests.support import RedisServer, free_port, wait_for  # noqa: E402

SCHEMA = json.loads((ROOT / "schemas/tax_policy.json").read_text())
TOPIC = SCHEMA["x-hms-topic"]  # tax-policy
EVENT_TYPE = SCHEMA["x-hms-event-type"]  # tax_policy.updated
BATCH_SIZE = 1000
CONCURRENCY = (1, 8)
EXTRA_TOPICS = 19  # a token scoped to 20 topics: tax-policy and these
AIM_BATCH_RATIO = 10.0
SECRET_KEY = "bench-only-secret-key"
WARM_UP_SECONDS = 1.0
FLOOR_TOKEN = "hms_malformed"  # refused before any query: the floor path's 401


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per path and concurrency")
    parser.add_argument(
        "--database-url", help="default: SQLite in a temporary folder; a PostgreSQL database is created and dropped"
    )
    parser.add_argument("--seed-events", type=int, default=3000, help="events per run of the seed's path")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 s per path, 500 seed events")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="experiment: a setting from the environment for the server (e.g. DATABASE_CONN_MAX_AGE=600)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database (and the server's log) afterwards")
    parser.add_argument(
        "--paths", default="single,batch,floor", help="paths to run, comma-separated: single, batch, floor (default)"
    )
    parser.add_argument(
        "--clients", default=",".join(map(str, CONCURRENCY)), help="concurrent clients per path, comma-separated"
    )
    arguments = parser.parse_args()
    arguments.paths = arguments.paths.split(",")
    arguments.clients = [int(count) for count in arguments.clients.split(",")]
    if arguments.quick:
        arguments.seconds, arguments.seed_events = min(arguments.seconds, 2.0), min(arguments.seed_events, 500)
    return arguments


# Setup: environment, database, demo data, tokens, the web server.


def _environment(database_url: str, redis_url: str, var_dir: str) -> dict[str, str]:
    """The bench's database and Redis with production settings, for this process and the server."""
    return {
        "DJANGO_SETTINGS_MODULE": "hmsadmin.settings",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DEBUG": "0",
        "SECRET_KEY": SECRET_KEY,
        "ALLOWED_HOSTS": "127.0.0.1,testserver",  # testserver: the in-process query count
        "VAR_DIR": var_dir,
        "PYTHONUNBUFFERED": "1",
    }


def _extra_topics() -> list[Any]:
    """19 more topics, each with one event type and a schema version, made through the actions."""
    from busapp.actions.registry import event_type_create, schema_version_create, topic_create

    schema = {key: value for key, value in SCHEMA.items() if not key.startswith("x-hms-")}
    topics = []
    for n in range(1, EXTRA_TOPICS + 1):
        topic = topic_create(name=f"bench.api-{n:02d}", description="bench/api.py", actor="bench")
        event_type = event_type_create(topic=topic, name=f"bench_api_{n:02d}.updated", actor="bench")
        schema_version_create(event_type=event_type, schema=schema, actor="bench")
        topics.append(topic)
    return topics


def _token(name: str, topics: list[Any]) -> str:
    """A service token's text, publish and view rights on ``topics``, issued by the demo admin."""
    from django.contrib.auth.models import User

    from busapp.actions.tokens import service_token_create

    _, text = service_token_create(
        name=name, topics=topics, actor=User.objects.get(username="admin"), can_publish=True, can_view=True
    )
    return text


def _server_command(port: int) -> list[str]:
    """The Procfile's ``web:`` command line, on ``port``."""
    line = next(
        (line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:")),
        None,
    )
    if line is None or "${WEB_PORT:-8000}" not in line:
        raise RuntimeError("Procfile has no 'web:' line with --port ${WEB_PORT:-8000}: update bench/api.py to match it")
    return shlex.split(line.removeprefix("web:").replace("${WEB_PORT:-8000}", str(port)))


def _start_server(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """The web server as production runs it, its output (the access log too) written to ``log``."""
    with log.open("wb") as output:
        return subprocess.Popen(_server_command(port), cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)


def _postgres_cpu_seconds() -> float:
    """CPU seconds of PostgreSQL's processes on this machine, the backends that ended included (reaped, as children)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # ended meanwhile
            continue
        name, fields = text[text.index("(") + 1 : text.rindex(")")], text.rsplit(")", 1)[1].split()
        if name == "postgres":
            total += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


# The load: keep-alive connections, each one request at a time.


class Connection:
    """One persistent HTTP/1.1 connection to the server, as a service's client pool keeps one."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.head = (
            f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        """Connect (asyncio sets TCP_NODELAY)."""
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST a JSON body; the answer's status and body."""
        assert self.reader is not None
        assert self.writer is not None
        self.writer.write(
            b"POST " + path.encode() + b" HTTP/1.1\r\n" + self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError(f"the server answered without Content-Length: {head!r}")
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        """Close the connection."""
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()


@dataclass
class Phase:
    """What one path at one concurrency measured."""

    path: str  # single | batch
    concurrency: int
    events: int = 0
    requests: int = 0
    sent: int = 0  # requests sent, warm-up included
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # ms per request, sorted at the end
    refused: Counter[str] = field(default_factory=Counter)  # answers that were not the expected one
    cpu: dict[str, float] = field(default_factory=dict)  # share of one core over the phase
    seed: float = 0.0  # events/s of the seed's path beside it
    sessions: int | None = None  # PostgreSQL sessions opened meanwhile (None on SQLite)

    @property
    def rate(self) -> float:
        """Events per second."""
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def cpu_us(self) -> float:
        """The server's CPU time per event, in microseconds."""
        return self.cpu["server"] * self.seconds / self.events * 1e6 if self.events else float("nan")


def _single_body(n: int) -> bytes:
    """One event, the seed's payload."""
    return json.dumps({"type": EVENT_TYPE, "payload": {"standard_deduction": 15000 + n}}).encode()


def _batch_body(first: int) -> bytes:
    """1,000 events, the seed's payload each."""
    items = [
        {"type": EVENT_TYPE, "payload": {"standard_deduction": 15000 + n}} for n in range(first, first + BATCH_SIZE)
    ]
    return json.dumps({"events": items}).encode()


def _single_refusal(status: int, body: bytes) -> str | None:
    """None for a published event (201), else what came back."""
    return None if status == 201 else f"{status} {body[:200]!r}"


def _floor_refusal(status: int, body: bytes) -> str | None:
    """None for the malformed token's 401, else what came back."""
    return None if status == 401 else f"{status} {body[:200]!r}"


def _batch_refusal(status: int, body: bytes) -> str | None:
    """None for a batch answered 200 with every event published, else what came back."""
    if status != 200:
        return f"{status} {body[:200]!r}"
    answer = json.loads(body)
    if answer["published"] != BATCH_SIZE:
        return f"200 with {answer['published']} published, {answer['pending']} pending, {answer['dead_lettered']} dead"
    return None


async def _client(
    connection: Connection,
    phase: Phase,
    bodies: list[bytes],
    refusal: Callable[[int, bytes], str | None],
    deadline: float,
    record: bool,
) -> None:
    """Send requests one after the other until ``deadline``, recording each answer's time."""
    url = f"/api/topics/{TOPIC}/events/{'batch/' if phase.path == 'batch' else ''}"
    per_request = BATCH_SIZE if phase.path == "batch" else 1
    n = 0
    while time.perf_counter() < deadline:
        body = bodies[n % len(bodies)]
        n += 1
        start = time.perf_counter()
        status, answer = await connection.post(url, body)
        elapsed = time.perf_counter() - start
        phase.sent += 1
        problem = refusal(status, answer)
        if not record:
            continue
        if problem is not None:
            phase.refused[problem] += 1
            continue
        phase.latencies.append(elapsed * 1000)
        phase.requests += 1
        phase.events += per_request


CpuMeters = dict[str, Callable[[], float]]  # name -> CPU seconds so far


async def _phase(port: int, token: str, path: str, concurrency: int, seconds: float, meters: CpuMeters) -> Phase:
    """One path at one concurrency: connect, warm up, then measure for ``seconds``."""
    phase = Phase(path, concurrency)
    connections = [Connection(port, FLOOR_TOKEN if path == "floor" else token) for _ in range(concurrency)]
    await asyncio.gather(*(connection.open() for connection in connections))
    if path == "batch":
        bodies = [[_batch_body(BATCH_SIZE * client)] for client in range(concurrency)]
        refusal = _batch_refusal
    else:
        bodies = [[_single_body(100 * client + n) for n in range(100)] for client in range(concurrency)]
        refusal = _floor_refusal if path == "floor" else _single_refusal
    try:
        deadline = time.perf_counter() + WARM_UP_SECONDS
        await asyncio.gather(
            *(_client(c, phase, b, refusal, deadline, record=False) for c, b in zip(connections, bodies, strict=True))
        )
        cpu_start = {name: meter() for name, meter in meters.items()}
        bench_start, machine_start = time.process_time(), _machine_busy_seconds()
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(
            *(_client(c, phase, b, refusal, deadline, record=True) for c, b in zip(connections, bodies, strict=True))
        )
        phase.seconds = time.perf_counter() - start
    finally:
        await asyncio.gather(*(connection.close() for connection in connections))
    phase.cpu = {name: (meter() - cpu_start[name]) / phase.seconds for name, meter in meters.items()}
    phase.cpu["bench"] = (time.process_time() - bench_start) / phase.seconds
    phase.cpu["machine"] = (_machine_busy_seconds() - machine_start) / phase.seconds
    phase.latencies.sort()
    return phase


def _print_phase(phase: Phase) -> None:
    """A line as each phase ends, so a long run shows progress."""
    print(
        f"  {phase.path:<6} x{phase.concurrency}: {phase.requests:,} requests, {phase.rate:,.0f} events/s, "
        f"p50 {_p(phase.latencies, 50):.1f} ms, p99 {_p(phase.latencies, 99):.1f} ms"
        + (f", {sum(phase.refused.values())} not as expected" if phase.refused else ""),
        flush=True,
    )


# Queries per request, in this process.

# What each query of an API request is for, by its SQL (first match wins).
QUERY_KINDS = (
    ("token lookup", re.compile(r'FROM "busapp_servicetoken" ')),
    ("token last use", re.compile(r'UPDATE "busapp_servicetoken" SET "last_used_at"')),
    ("scope check", re.compile(r'"busapp_servicetoken_topics"')),
    ("topic by name", re.compile(r'FROM "busapp_topic" WHERE "busapp_topic"."name" =')),
)
WORK = "work"
AUTHENTICATION = {"token lookup", "token last use"}
PERMISSION = {"scope check"}


def query_kind(sql: str) -> str:
    """What a query is for: the token, the scope, the topic, or the request's own work."""
    return next((kind for kind, pattern in QUERY_KINDS if pattern.search(sql)), WORK)


@dataclass
class QueryCount:
    """The SQL of one request, each query with what it is for."""

    label: str
    status: int
    queries: list[str]

    def of(self, kinds: set[str]) -> list[str]:
        """The queries of these kinds."""
        return [sql for sql in self.queries if query_kind(sql) in kinds]


def _captured(label: str, call: Callable[[], Any]) -> QueryCount:
    """The queries of one request made by ``call``."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        response = call()
    return QueryCount(label, response.status_code, [query["sql"] for query in captured.captured_queries])


def _query_counts(token_one: str, token_twenty: str, token_unused: str) -> tuple[list[QueryCount], QueryCount]:
    """A single publish and a topic list per token, warm; and a token's first request, which notes its use."""
    from django.test import Client

    url = f"/api/topics/{TOPIC}/events/"
    counts = []
    for scope, token in (("1 topic", token_one), ("20 topics", token_twenty)):
        client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
        requests = [
            (f"POST events/, token on {scope}", partial(client.post, url, _single_body(0), "application/json")),
            (f"GET /api/topics/, token on {scope}", partial(client.get, "/api/topics/")),
        ]
        for label, call in requests:
            call()  # a token's first use writes its last_used_at (at most once a minute): counted apart
            counts.append(_captured(label, call))
    first = Client(HTTP_AUTHORIZATION=f"Bearer {token_unused}")
    return counts, _captured("GET /api/topics/, a token's first use", lambda: first.get("/api/topics/"))


def _shortened(sql: str, width: int = 140) -> str:
    """A query on one line, its column list elided."""
    sql = " ".join(sql.split())
    sql = re.sub(r"^SELECT .+? FROM", "SELECT ... FROM", sql)
    return sql if len(sql) <= width else sql[: width - 3] + "..."


# Where a single publish's CPU goes, layer by layer, in this process.


def _cpu_per_call(call: Callable[[], object], count: int) -> float:
    """The process's CPU time per call, in microseconds, after a tenth as many calls (at least 3) of warm-up."""
    for _ in range(max(3, count // 10)):
        call()
    cpu = time.process_time()
    for _ in range(count):
        call()
    return (time.process_time() - cpu) / count * 1e6


class AsgiPost:
    """POSTs to the ASGI application in this process, no HTTP server between, and checks the status."""

    def __init__(self, path: str, token: str, body: bytes, status: int) -> None:
        from hmsadmin.asgi import application

        self.application = application
        self.body = body
        self.status = status
        headers = [
            (b"host", b"127.0.0.1"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
        }

    async def request(self) -> None:
        """One request: the body, then a client that stays connected until the answer."""
        received = False
        never = asyncio.get_running_loop().create_future()
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            nonlocal received
            if received:
                await never
            received = True
            return {"type": "http.request", "body": self.body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.application(dict(self.scope), receive, send)
        assert sent[0]["status"] == self.status, sent

    def cpu_per_call(self, count: int) -> float:
        """The process's CPU time per request, in microseconds."""
        loop = asyncio.new_event_loop()
        try:
            return _cpu_per_call(lambda: loop.run_until_complete(self.request()), count)
        finally:
            loop.close()


@dataclass
class Layer:
    """The CPU per event of a single publish and of a batch's events, through one more layer."""

    name: str
    single_us: float
    batch_us: float


def _layers(token: str, count: int) -> list[Layer]:
    """CPU per event: the actions alone, then through Django and DRF, then through the ASGI application."""
    from django.test import Client

    from busapp.actions.publishing import event_publish, event_publish_batch

    single_path, batch_path = f"/api/topics/{TOPIC}/events/", f"/api/topics/{TOPIC}/events/batch/"
    single_body, batch_body = _single_body(0), _batch_body(0)
    items = json.loads(batch_body)["events"]
    batches = max(3, count // 30)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")

    def single() -> object:
        return event_publish(
            topic=TOPIC, event_type=EVENT_TYPE, payload={"standard_deduction": 15000}, actor="bench", source="api"
        )

    def batch() -> object:
        return event_publish_batch(topic=TOPIC, items=items, actor="bench", source="api")

    def single_django() -> object:
        response = client.post(single_path, single_body, "application/json")
        assert response.status_code == 201, response.content
        return response

    def batch_django() -> object:
        response = client.post(batch_path, batch_body, "application/json")
        assert response.status_code == 200, response.content
        return response

    return [
        Layer(
            "the service alone: event_publish / event_publish_batch",
            _cpu_per_call(single, count),
            _cpu_per_call(batch, batches) / BATCH_SIZE,
        ),
        Layer(
            "+ Django and DRF: the POST through Django's test Client",
            _cpu_per_call(single_django, count),
            _cpu_per_call(batch_django, batches) / BATCH_SIZE,
        ),
        Layer(
            "+ ASGI: the POST through hmsadmin.asgi.application, no server",
            AsgiPost(single_path, token, single_body, 201).cpu_per_call(count),
            AsgiPost(batch_path, token, batch_body, 200).cpu_per_call(batches) / BATCH_SIZE,
        ),
    ]


# The seed's path, and the report.


@dataclass
class Seed:
    """One run of the seed's path in this process: events/s and this process's CPU per event."""

    rate: float
    cpu_us: float


def _seed(redis_url: str, count: int) -> Seed:
    """``bench/publish.py``'s seed loop (``jsonschema.validate`` + ``PUBLISH``), with its CPU time."""
    cpu = time.process_time()
    rate = count / _seed_path(redis_url, count)
    return Seed(rate, (time.process_time() - cpu) / count * 1e6)


def _median(values: list[float]) -> float:
    """The middle value (the upper one of an even count)."""
    return sorted(values)[len(values) // 2]


def _report(
    arguments: argparse.Namespace,
    seeds: list[Seed],
    phases: list[Phase],
    counts: list[QueryCount],
    first_use: QueryCount,
    layers: list[Layer],
    log: Path,
) -> None:
    """The figures, their ratio to the seed's path beside them, the aim, the CPU, the queries per request."""
    print()
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"load average at the end: {', '.join(f'{load:.2f}' for load in os.getloadavg())}")
    print(f"code: {_revision()}" + (f"; server environment set: {', '.join(arguments.env)}" if arguments.env else ""))
    print(f"database: {_database_line()}; Redis: own redis-server")
    print(f"server: {' '.join(_server_command(0)).replace('--port 0', '--port <free>')}")
    print()
    print(f"{'path':<44}{'clients':>8}{'events/s':>10}{'p50 ms':>8}{'p99 ms':>8}{'seed beside':>13}{'vs seed':>9}")
    seed_rate = _median([seed.rate for seed in seeds])
    print(f"{'seed: jsonschema.validate + PUBLISH':<44}{1:>8}{seed_rate:>10,.0f}{'-':>8}{'-':>8}")
    names = {
        "single": "single: POST events/, 1 event",
        "batch": f"batch: POST events/batch/, {BATCH_SIZE:,} events",
        "floor": "floor: the same POST, token malformed (401)",
    }
    for phase in phases:
        print(
            f"{names[phase.path]:<44}{phase.concurrency:>8}{phase.rate:>10,.0f}{_p(phase.latencies, 50):>8.1f}"
            f"{_p(phase.latencies, 99):>8.1f}{phase.seed:>13,.0f}{phase.rate / phase.seed:>8.2f}x"
        )
    print(
        "(seed: its median run; it ran before each path and after the last: "
        f"{', '.join(f'{seed.rate:,.0f}' for seed in seeds)} events/s. Seed beside: the mean of the runs just "
        "before and after the path. Latency per request: a batch's is for all its events.)"
    )
    for phase in phases:
        if phase.sessions is not None:
            print(
                f"PostgreSQL sessions opened during {phase.path} x{phase.concurrency}: {phase.sessions:,} for "
                f"{phase.sent:,} requests (warm-up included)"
            )
    for phase in phases:
        if phase.path == "batch":
            ratio = phase.rate / phase.seed
            print(
                f"aim: batch at least {AIM_BATCH_RATIO:.0f}x the seed's path, {phase.concurrency} "
                f"client{'s' if phase.concurrency > 1 else ''}: {'met' if ratio >= AIM_BATCH_RATIO else 'NOT met'}"
                f" ({ratio:.1f}x)"
            )
    for phase in phases:
        if phase.refused:
            print(f"{phase.path} x{phase.concurrency}: answers not as expected: {dict(phase.refused.most_common(3))}")
    print()
    seed_cpu = _median([seed.cpu_us for seed in seeds])
    processes = ["server", "redis", *(["postgres"] if "postgres" in phases[0].cpu else []), "bench"]
    print(
        f"{'CPU, % of one core':<20}"
        + "".join(f"{name:>9}" for name in [*processes, "others", "machine"])
        + f"{'server CPU per event':>23}{'seed CPU / it':>15}"
    )
    for phase in phases:
        shares = [phase.cpu[name] * 100 for name in processes]
        machine = phase.cpu["machine"] * 100
        per_event = phase.cpu_us
        print(
            f"{phase.path + ' x' + str(phase.concurrency):<20}"
            + "".join(f"{share:>9.0f}" for share in shares)
            + f"{machine - sum(shares):>9.0f}{machine:>9.0f}{per_event:>20,.0f} us{seed_cpu / per_event:>14.2f}x"
        )
    print(
        ("(postgres: its processes, ended backends included; " if "postgres" in processes else "(")
        + "bench: this process, the clients; others: the rest of the machine; "
        f"machine: all {os.cpu_count()} cores. "
        f"The seed's path costs this process {seed_cpu:,.0f} us of CPU per event (median of its runs): the last "
        "column compares CPU per event, which other work on the machine disturbs less than events/s.)"
    )
    print()
    measured = {(phase.path, phase.concurrency): phase for phase in phases}
    single, batch = measured.get(("single", 1)), measured.get(("batch", 1))
    if single and batch:  # both were run (--paths, --clients)
        http = Layer("+ HTTP: uvicorn over loopback (the server above, 1 client)", single.cpu_us, batch.cpu_us)
        layers = [*layers, http]
    print(
        f"{'where the CPU of a publish goes, per event, in this process but the last':<66}{'single':>10}{'batch':>10}"
    )
    for layer in layers:
        print(f"  {layer.name:<64}{layer.single_us:>7,.0f} us{layer.batch_us:>7,.0f} us")
    print(
        "(Django's test Client keeps one database connection for all its requests; under ASGI each request opens "
        "its own, in its own thread)"
    )
    print()
    _report_queries(counts, first_use)
    lines = log.read_text(errors="replace").splitlines()
    errors = [line for line in lines if "Traceback" in line or "ERROR" in line]
    if errors:
        print()
        print(f"the server printed {len(errors)} error lines; the end of its log, requests left out:")
        print("\n".join([line for line in lines if ' HTTP/1.1" ' not in line][-40:]))


def _report_queries(counts: list[QueryCount], first_use: QueryCount) -> None:
    """Queries per request, those of authentication and permission apart, and whether they grow with the scope."""
    print("queries per request (Django's test Client in this process, same database and settings):")
    print(f"{'request':<42}{'status':>7}{'queries':>8}{'token':>7}{'scope':>7}{'topic':>7}{'work':>6}")
    for count in [*counts, first_use]:
        kinds = Counter(query_kind(sql) for sql in count.queries)
        print(
            f"{count.label:<42}{count.status:>7}{len(count.queries):>8}{len(count.of(AUTHENTICATION)):>7}"
            f"{len(count.of(PERMISSION)):>7}{kinds['topic by name']:>7}{kinds[WORK]:>6}"
        )
    print(
        "(token: authentication, the lookup by prefix and, at most once a minute, the last-use note; "
        "scope: the permission check against the token's topics; topic: the topic by its name; work: the rest)"
    )
    for method in ("POST", "GET"):
        one, twenty = (count for count in counts if count.label.startswith(method))
        checks = [len(count.of(AUTHENTICATION | PERMISSION)) for count in (one, twenty)]
        grows = len(twenty.queries) > len(one.queries) or checks[1] > checks[0]
        print(
            f"{method}, token on 1 topic -> on 20: {len(one.queries)} -> {len(twenty.queries)} queries, "
            f"{checks[0]} -> {checks[1]} of them authentication and permission: "
            + ("GROWS with the topics" if grows else "constant")
        )
    for count in counts:
        if "20 topics" in count.label:
            print(f"{count.label}:")
            for sql in count.queries:
                print(f"  {query_kind(sql):<16}{_shortened(sql)}")
    print("and what a token's first request (or its first after a minute) adds:")
    for sql in first_use.of({"token last use"}):
        print(f"  {'token last use':<16}{_shortened(sql)}")


def _postgres_sessions() -> int | None:
    """Sessions ever opened on the bench's PostgreSQL database (None on SQLite)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # this session's view of the statistics, read afresh
        cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def _run_phase(
    arguments: argparse.Namespace, port: int, token: str, path: str, concurrency: int, meters: CpuMeters
) -> Phase:
    """One path at one concurrency in its own event loop, its progress line printed."""
    sessions = _postgres_sessions()
    phase = asyncio.run(_phase(port, token, path, concurrency, arguments.seconds, meters))
    if sessions is not None:
        time.sleep(0.7)  # a backend counts its session when it ends; the last requests' have just ended
        phase.sessions = (_postgres_sessions() or 0) - sessions
    _print_phase(phase)
    return phase


def main() -> None:
    """Start Redis and the server, run the seed's path and every path in turn, count the queries, print."""
    arguments = _arguments()
    redis_server = RedisServer()
    workdir = tempfile.mkdtemp(prefix="hms-bench-api-")
    postgres = bool(arguments.database_url and arguments.database_url.startswith("postgres"))
    database_url = arguments.database_url or f"sqlite:///{workdir}/bench.sqlite3"
    log = Path(workdir) / "server.log"
    server: subprocess.Popen[bytes] | None = None
    if postgres:
        _postgres_database(database_url, create=True)
    try:
        redis_server.start()
        env = _environment(database_url, redis_server.url(0), workdir)
        _setup(env)
        from busapp.models import Topic

        tax_policy = Topic.objects.get(name=TOPIC)
        token_one = _token("bench-api", [tax_policy])
        token_twenty = _token("bench-api-20", [tax_policy, *_extra_topics()])
        token_unused = _token("bench-api-first-use", [tax_policy])
        port = free_port()
        server_env = {**os.environ, **env, **dict(setting.split("=", 1) for setting in arguments.env)}
        server = _start_server(server_env, port, log)
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}"), timeout=30, what="the server's /healthz")
        assert redis_server.process is not None
        server_pid, redis_pid = server.pid, redis_server.process.pid
        meters: CpuMeters = {"server": lambda: _cpu_seconds(server_pid), "redis": lambda: _cpu_seconds(redis_pid)}
        if postgres:
            meters["postgres"] = _postgres_cpu_seconds
        print(f"server on port {port}, redis-server on {redis_server.port}; paths:", flush=True)

        # The seed's path before every path and after the last: each path is compared with the runs beside it.
        seeds = [_seed(redis_server.url(0), arguments.seed_events)]
        phases = []
        for path in arguments.paths:
            for concurrency in arguments.clients:
                print(f"  seed: {seeds[-1].rate:,.0f} events/s", flush=True)
                phase = _run_phase(arguments, port, token_one, path, concurrency, meters)
                seeds.append(_seed(redis_server.url(0), arguments.seed_events))
                phase.seed = (seeds[-2].rate + seeds[-1].rate) / 2
                phases.append(phase)
        print(f"  seed: {seeds[-1].rate:,.0f} events/s", flush=True)

        counts, first_use = _query_counts(token_one, token_twenty, token_unused)
        layers = _layers(token_one, 100 if arguments.quick else 300)
        _report(arguments, seeds, phases, counts, first_use, layers, log)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        _teardown(redis_server, workdir, database_url, keep=arguments.keep, kept=f", the server's log {log}")


if __name__ == "__main__":
    main()
