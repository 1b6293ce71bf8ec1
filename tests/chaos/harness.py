"""The chaos suite's machinery: real processes, load that keeps its own books, and the counts each scenario reports.

Every count is taken from outside the product: "accepted" is what the API answered (201/202,
or a batch item published/pending), "on the stream" is ``XRANGE stream:<topic>`` counted per
envelope id, "heard on Pub/Sub" is a subscriber of this process started before the load,
"recorded" is the history's rows. A request is sent with an ``Idempotency-Key`` and sent
again with the same key until it is answered, as a careful client does, so every event the
client was told about is known by id.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import redis
from django.contrib.auth.models import User
from django.db import connection

from busapp.actions.tokens import service_token_create
from busapp.models import AuditEntry, Event, EventStatus, Topic
from busapp.publishing import INGEST_STREAM, stream_key
from busapp.publishing import TAP_GROUP as GROUP
from tests.support import ROOT, OutputWatcher, RedisServer, database_url, free_port, manage, wait_for

TOPIC = "tax-policy"
EVENT_TYPE = "tax_policy.updated"
# 1 is the sizes (bench/chaos.py); the suite's default keeps CI within its time.
SCALE = float(os.environ.get("CHAOS_SCALE", "0.25"))
# Requests a second per API client (4 clients): 50 in CI, as fast as answered at scale 1 on two cores.
CLIENT_RATE = 200.0 * SCALE
# How long a scenario waits, once its fault is over, for every accepted event to be recorded and sent.
RECOVERY_TIMEOUT = float(os.environ.get("CHAOS_RECOVERY_TIMEOUT", "50"))
# After recovery, the counts must hold still this long: a late resend would show up as a duplicate.
QUIET_SECONDS = 2.0
# A failed scenario leaves its processes' output here.
LOGS_DIR = ROOT / "var" / "chaos-logs"
# A request that cannot be answered this long after the load stopped is given up (and counted).
GIVE_UP_SECONDS = 60.0
SECRET_KEY = "chaos-suite-only-secret-key"  # the processes run with DEBUG=0, as in production
# The PostgreSQL sessions of a scenario's processes say so (libpq's PGAPPNAME): a fault aimed at
# them must spare this process's own.
APP_SESSION_NAME = "hms-chaos-app"
RELAY_ACTION = "event.relay"
PUBLISH_ACTIONS = ("event.publish", "event.publish_batch")
_IDS_PER_QUERY = 500


def scaled(full: int, *, at_least: int) -> int:
    """``full`` (the issue's size) times CHAOS_SCALE, never below ``at_least``."""
    return max(at_least, round(full * SCALE))


def database_label() -> str:
    """Which database the suite runs on, for the table."""
    return "PostgreSQL" if connection.vendor == "postgresql" else "SQLite"


def process_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of every process of a scenario: the tests' database, the scenario's Redis, production mode."""
    return {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": redis_url,
        "PYTHONUNBUFFERED": "1",
        "DEBUG": "0",
        "SECRET_KEY": SECRET_KEY,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "PGAPPNAME": APP_SESSION_NAME,
        **extra,
    }


def api_token() -> str:
    """A service token that may publish on tax-policy, issued by the demo admin (committed: the servers read it)."""
    _, text = service_token_create(
        name="chaos-load", topics=[Topic.objects.get(name=TOPIC)], actor=User.objects.get(username="admin")
    )
    return text


def envelope_id_of(body: bytes) -> str | None:
    """The envelope id a bus message carries, or None when it is not a JSON object with a string id."""
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError):
        return None
    found = envelope.get("id") if isinstance(envelope, dict) else None
    return found if isinstance(found, str) else None


def external_envelope(deduction: float = 14600, **payload: Any) -> tuple[str, str]:
    """A valid seed-style envelope (the seed's four keys) and its id, as a publisher outside the dashboard sends it."""
    envelope_id = str(uuid.uuid4())
    envelope = {
        "id": envelope_id,
        "type": EVENT_TYPE,
        "timestamp": time.time(),
        "payload": {"standard_deduction": deduction, **payload},
    }
    return envelope_id, json.dumps(envelope)


# Processes


class WebProcess:
    """``uvicorn hmsadmin.asgi:application`` on a port of its own (kept when it is killed and started again)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.port = free_port()
        self.output: OutputWatcher | None = None
        self.killed = 0

    def start(self) -> None:
        """Start it and wait until it answers HTTP."""
        command = [str(ROOT / ".venv" / "bin" / "uvicorn"), "hmsadmin.asgi:application", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--ws-per-message-deflate", "false", "--log-level", "warning"]
        process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.output = OutputWatcher(process)
        wait_for(self._answers, timeout=30, what=f"uvicorn on port {self.port} to answer")

    def _answers(self) -> bool:
        """True once it answers /healthz, whatever it says; a server that exited fails at once."""
        assert self.output is not None
        if self.output.process.poll() is not None:
            raise AssertionError(f"uvicorn on port {self.port} exited: {self.output.lines[-20:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            conn.close()
        except OSError:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL it, whatever it is doing."""
        assert self.output is not None
        self.output.process.send_signal(signal.SIGKILL)
        self.output.process.wait(timeout=10)
        self.killed += 1

    def died(self) -> str | None:
        """Why it is not running (when it was not killed on purpose), else None."""
        process = self.output.process if self.output else None
        if process is None or process.poll() is None:
            return None
        return f"web :{self.port} exited with {process.returncode}; its last output: {self.output.lines[-15:]}"  # type: ignore[union-attr]

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.output is not None:
            self.output.stop()


class WorkerProcess:
    """``manage.py bus_worker --name <name>``."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.env = env
        self.output: OutputWatcher | None = None
        self.killed = False

    def start(self) -> None:
        """Start it and wait until it says it runs."""
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "bus_worker", "--name", self.name],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = OutputWatcher(process)
        self.output.wait_for_line(f"bus worker {self.name} running", timeout=30)

    def kill(self) -> None:
        """SIGKILL it: whatever it read and did not acknowledge stays pending in the group."""
        assert self.output is not None
        self.output.process.send_signal(signal.SIGKILL)
        self.output.process.wait(timeout=10)
        self.killed = True

    @property
    def running(self) -> bool:
        """True while its process runs."""
        return self.output is not None and self.output.process.poll() is None

    def died(self) -> str | None:
        """Why it is not running (when it was not killed on purpose), else None."""
        process = self.output.process if self.output else None
        if self.killed or process is None or process.poll() is None:
            return None
        tail = "\n    ".join(self.output.lines[-25:])  # type: ignore[union-attr]
        return f"worker {self.name} exited with {process.returncode}; its last output:\n    {tail}"

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.output is not None:
            self.output.stop()


# Words of log lines worth quoting, gravest first.
_ALARMS = ("deadlock", "error:", "exception", "error", "warning")
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")
_DIGITS = re.compile(r"\d+")


class Cluster:
    """The processes of one scenario: web servers and bus workers on the tests' database and the scenario's Redis."""

    started: ClassVar[list[Cluster]] = []  # stopped after each test (tests/chaos/conftest.py)

    def __init__(self, redis_server: RedisServer, *, webs: int, workers: int, **env: str) -> None:
        self.redis_server = redis_server
        self.env = process_env(redis_server.url(0), **env)
        self.webs = [WebProcess(self.env) for _ in range(webs)]
        self.workers = [WorkerProcess(f"chaos-w{index + 1}", self.env) for index in range(workers)]

    def start(self) -> None:
        """Start the web servers and the workers, waiting until each is ready."""
        Cluster.started.append(self)
        for web in self.webs:
            web.start()
        for worker in self.workers:
            worker.start()

    @property
    def ports(self) -> list[int]:
        """The web servers' ports."""
        return [web.port for web in self.webs]

    def worker(self, name: str) -> WorkerProcess:
        """The worker of that consumer name."""
        return next(worker for worker in self.workers if worker.name == name)

    def deaths(self) -> list[str]:
        """Every process that ended without being killed on purpose."""
        processes: list[WebProcess | WorkerProcess] = [*self.webs, *self.workers]
        return [why for process in processes if (why := process.died())]

    def complaints(self, *, most: int = 5) -> list[str]:
        """What each process logged about errors, each kind once, the gravest first (what an operator reads first)."""
        found = []
        processes: list[WebProcess | WorkerProcess] = [*self.webs, *self.workers]
        for process in processes:
            if process.output is None:
                continue
            kinds: dict[str, tuple[int, str]] = {}
            for line in process.output.lines:
                rank = next((rank for rank, word in enumerate(_ALARMS) if word in line.lower()), None)
                if rank is None:
                    continue
                text = _LOG_PREFIX.sub("", line.strip())
                kinds.setdefault(_DIGITS.sub("N", text)[:80], (rank, text[:300]))
            label = process.name if isinstance(process, WorkerProcess) else f"web :{process.port}"
            gravest = sorted(kinds.values(), key=lambda kind: kind[0])[:most]
            found += [f"{label} logged: {text}" for _, text in gravest]
        return found

    def logs_keep(self, scenario: str) -> Path:
        """Write each process's output to ``var/chaos-logs/<scenario>/`` (read after a failure); the folder."""
        folder = LOGS_DIR / re.sub(r"[^a-z0-9]+", "-", scenario.lower()).strip("-")
        folder.mkdir(parents=True, exist_ok=True)
        processes: list[WebProcess | WorkerProcess] = [*self.webs, *self.workers]
        for process in processes:
            if process.output is not None:
                label = process.name if isinstance(process, WorkerProcess) else f"web-{process.port}"
                (folder / f"{label}.log").write_text("\n".join(process.output.lines) + "\n")
        return folder

    def stop(self) -> None:
        """Stop every process it started."""
        if self in Cluster.started:
            Cluster.started.remove(self)
        processes: list[WebProcess | WorkerProcess] = [*self.webs, *self.workers]
        for process in processes:
            with contextlib.suppress(Exception):
                process.stop()


# What the bus carried


class PubSubCounter:
    """A Pub/Sub subscriber in a thread, started before the load: it counts what it hears per envelope id.

    It subscribes again whenever its connection breaks (a killed Redis), as a seed subscriber
    restarted by its supervisor would.
    """

    def __init__(self, redis_url: str, channel: str = TOPIC) -> None:
        self.redis_url = redis_url
        self.channel = channel
        self.counts: Counter[str] = Counter()
        self.first_heard: dict[str, float] = {}
        self.not_envelopes = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pubsub-counter", daemon=True)

    def start(self) -> None:
        """Subscribe, and wait until Redis counts the subscription."""
        self._thread.start()
        client = redis.Redis.from_url(self.redis_url)
        wait_for(
            lambda: client.pubsub_numsub(self.channel)[0][1] >= 1, timeout=10, what="the Pub/Sub counter to subscribe"
        )
        client.close()

    def _run(self) -> None:
        """Listen until stopped, subscribing again after a broken connection."""
        while not self._stopping.is_set():
            client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=1)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is not None and message["type"] == "message":
                        self._note(message["data"])
            except (redis.RedisError, OSError):
                self._stopping.wait(0.1)  # Redis is down: try again shortly
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()
                client.close()

    def _note(self, data: bytes) -> None:
        """Count one message by its envelope id."""
        envelope_id = envelope_id_of(data)
        if envelope_id is None:
            self.not_envelopes += 1
            return
        self.counts[envelope_id] += 1
        self.first_heard.setdefault(envelope_id, time.monotonic())

    @property
    def total(self) -> int:
        """Messages heard so far."""
        return sum(self.counts.values()) + self.not_envelopes

    def stop(self) -> None:
        """Stop listening."""
        self._stopping.set()
        self._thread.join(timeout=5)


def stream_counts(client: redis.Redis, channel: str = TOPIC) -> Counter[str]:
    """``XRANGE stream:<channel>`` counted per envelope id (entries that carry none are left out)."""
    counts: Counter[str] = Counter()
    start = "-"
    while True:
        entries: list[Any] = client.xrange(stream_key(channel), min=start, max="+", count=5000)  # type: ignore[assignment]
        for _entry_id, fields in entries:
            envelope_id = envelope_id_of(fields.get(b"event", b""))
            if envelope_id is not None:
                counts[envelope_id] += 1
        if len(entries) < 5000:
            return counts
        last = entries[-1][0]
        start = "(" + (last.decode() if isinstance(last, bytes) else last)


def group_pending(client: redis.Redis) -> dict[str, int]:
    """Entries read by a worker and not yet acknowledged, per stream (those with none are left out)."""
    pending: dict[str, int] = {}
    for stream in [stream_key(name) for name in Topic.objects.values_list("name", flat=True)] + [INGEST_STREAM]:
        try:
            count = int(client.xpending(stream, GROUP)["pending"])
        except redis.ResponseError:  # no such stream or group: nothing pending
            continue
        if count:
            pending[stream] = count
    return pending


def duplicates(counts: Counter[str], *, among: Iterable[str] | None = None, exempt: set[str] | None = None) -> int:
    """How many copies beyond the first, over ``among`` (default all ids), leaving out ``exempt`` ids."""
    ids = counts.keys() if among is None else among
    exempt = exempt or set()
    return sum(counts[envelope_id] - 1 for envelope_id in ids if counts[envelope_id] > 1 and envelope_id not in exempt)


def _chunks(ids: list[str]) -> Iterable[list[str]]:
    """Ids in lists short enough for one IN (...) on every database."""
    for start in range(0, len(ids), _IDS_PER_QUERY):
        yield ids[start : start + _IDS_PER_QUERY]


def published_ids(ids: Iterable[str]) -> set[str]:
    """Those of these envelope ids whose history rows say published."""
    found: set[str] = set()
    for chunk in _chunks(list(ids)):
        found.update(
            Event.objects.filter(envelope_id__in=chunk, status=EventStatus.PUBLISHED).values_list(
                "envelope_id", flat=True
            )
        )
    return found


def recorded_ids(ids: Iterable[str]) -> set[str]:
    """Those of these envelope ids that history holds, whatever their status."""
    found: set[str] = set()
    for chunk in _chunks(list(ids)):
        found.update(Event.objects.filter(envelope_id__in=chunk).values_list("envelope_id", flat=True))
    return found


def later_audit_counts(ids: Iterable[str]) -> Counter[tuple[str, str]]:
    """Audit entries naming each of these events besides its publish: (envelope id, action) -> how many.

    An event the API accepted as pending went on the bus later; ``event.relay`` says when
    and by whom. Any other action that explains it is counted too, so the check asks for an
    explanation, not for one implementation.
    """
    counts: Counter[tuple[str, str]] = Counter()
    for chunk in _chunks(list(ids)):
        entries = AuditEntry.objects.filter(target__in=[f"event:{i}" for i in chunk]).exclude(
            action__in=PUBLISH_ACTIONS
        )
        counts.update(
            (target.removeprefix("event:"), action) for target, action in entries.values_list("target", "action")
        )
    return counts


def pending_rows() -> int:
    """History rows still waiting for the relay."""
    return Event.objects.filter(status=EventStatus.PENDING).count()


# Load


@dataclass
class Attempt:
    """The outcome of one logical request, sent until answered."""

    status: int | None
    body: dict[str, Any] | None


class ApiLoad:
    """Client threads publishing on tax-policy through the API of the web servers, round robin.

    Each request has its own Idempotency-Key and is sent again with it (to the next server)
    after a broken connection or a 5xx, until answered or given up GIVE_UP_SECONDS after the
    load stopped. ``batch`` > 0 sends batches of that many events instead of single events.
    """

    def __init__(
        self, ports: list[int], token: str, *, clients: int = 4, rate: float | None = None, batch: int = 0
    ) -> None:
        self.ports = ports
        self.token = token
        self.clients = clients
        self.rate = rate  # logical requests per second per client; None: as fast as answered
        self.batch = batch
        self.accepted: dict[str, str] = {}  # envelope id -> status the API answered ("published" / "pending")
        self.answered_at: dict[str, float] = {}
        self._first_answer_pending: set[str] = set()
        self.server_errors: list[str] = []
        # 503s that ask for the request again (Retry-After: the database connection was lost mid-request).
        self.retry_asked = 0
        self.connection_errors = 0
        self.refused: Counter[int] = Counter()
        self.given_up = 0
        self.in_flight: dict[int, tuple[int, float]] = {}  # client index -> (port, monotonic start)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stopped_at: float | None = None
        self._threads = [
            threading.Thread(target=self._client, args=(index,), name=f"api-client-{index}", daemon=True)
            for index in range(clients)
        ]

    def start(self) -> None:
        """Start the clients."""
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop sending new requests; wait until every request in flight is answered or given up."""
        self._stopped_at = time.monotonic()
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=GIVE_UP_SECONDS + 15)

    def wait_for_accepted(self, more: int, *, timeout: float = 60) -> None:
        """Wait until ``more`` events beyond those accepted now have been accepted."""
        target = len(self.accepted) + more
        wait_for(lambda: len(self.accepted) >= target, timeout=timeout, what=f"the API to accept {target} events")

    @property
    def accepted_pending(self) -> set[str]:
        """Ids the API accepted while it could not send them (202 / batch "pending"): the relay's to send.

        Only answers to a request's first sending: a request sent again after its server died
        may get the first one's kept answer, saved as pending before that server sent the events.
        """
        return set(self._first_answer_pending)

    @property
    def accepted_pending_any(self) -> set[str]:
        """Ids answered pending, first sending or not."""
        return {envelope_id for envelope_id, status in list(self.accepted.items()) if status == "pending"}

    def _client(self, index: int) -> None:
        """One client: a logical request at a time, paced at ``rate``."""
        connections: dict[int, http.client.HTTPConnection] = {}
        next_at = time.monotonic()
        sequence = 0
        while not self._stopping.is_set():
            sequence += 1
            self._send_until_answered(index, self._body(index, sequence), str(uuid.uuid4()), connections)
            if self.rate:
                # A client held up (a fault) does not catch up in a burst afterwards: at most ``rate``.
                next_at = max(next_at + 1 / self.rate, time.monotonic())
                self._stopping.wait(next_at - time.monotonic())
        for conn in connections.values():
            conn.close()

    def _body(self, index: int, sequence: int) -> bytes:
        """A single event or a batch, each payload telling which client sent it."""
        event = {"type": EVENT_TYPE, "payload": {"standard_deduction": index * 1_000_000 + sequence}}
        if self.batch:
            events = [
                {"type": EVENT_TYPE, "payload": {"standard_deduction": index * 1_000_000 + sequence * 10_000 + item}}
                for item in range(self.batch)
            ]
            return json.dumps({"events": events}).encode()
        return json.dumps(event).encode()

    def _send_until_answered(
        self, index: int, body: bytes, key: str, connections: dict[int, http.client.HTTPConnection]
    ) -> None:
        """Send one logical request until it is answered (any status under 500) or given up."""
        path = f"/api/topics/{TOPIC}/events/batch/" if self.batch else f"/api/topics/{TOPIC}/events/"
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/json",
            "Idempotency-Key": key,
        }
        attempt = 0
        while True:
            port = self.ports[(index + attempt) % len(self.ports)]
            attempt += 1
            conn = connections.get(port) or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            connections[port] = conn
            self.in_flight[index] = (port, time.monotonic())
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                status, text = response.status, response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                del connections[port]
                with self._lock:
                    self.connection_errors += 1
                if self._gave_up():
                    return
                time.sleep(0.05)  # a moment before the next server, as a client's retry would
                continue
            finally:
                self.in_flight.pop(index, None)
            if status >= 500:
                with self._lock:
                    if status == 503 and b"send the request again" in text:
                        self.retry_asked += 1  # an answer that says to retry: the client does, once accepted
                    else:
                        self.server_errors.append(f"{status} from :{port}: {text[:300]!r}")
                if self._gave_up():
                    return
                time.sleep(0.05)
                continue
            self._note(status, text, first=attempt == 1)
            return

    def _gave_up(self) -> bool:
        """True (and counted) once the load has been stopped for GIVE_UP_SECONDS."""
        if self._stopped_at is not None and time.monotonic() - self._stopped_at > GIVE_UP_SECONDS:
            with self._lock:
                self.given_up += 1
            return True
        return False

    def _note(self, status: int, text: bytes, *, first: bool) -> None:
        """Record what an answer accepted."""
        now = time.monotonic()
        if status not in (200, 201, 202):
            with self._lock:
                self.refused[status] += 1
            return
        answer = json.loads(text)
        items = answer["results"] if self.batch else [answer]
        with self._lock:
            for item in items:
                if item["status"] in ("published", "pending"):
                    self.accepted[item["id"]] = item["status"]
                    self.answered_at[item["id"]] = now
                    if first and item["status"] == "pending":
                        self._first_answer_pending.add(item["id"])
                else:
                    self.refused[status] += 1


class ExternalPublisher:
    """A seed-style publisher outside the dashboard, in a thread: ``PUBLISH`` (and/or ``XADD``) of valid envelopes."""

    def __init__(self, redis_url: str, *, rate: float, publish: bool = True, xadd: bool = False) -> None:
        self.client = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=5)
        self.rate = rate
        self.publish, self.xadd = publish, xadd
        self.sent: list[str] = []
        self.failed = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="external-publisher", daemon=True)

    def start(self) -> None:
        """Start publishing."""
        self._thread.start()

    def _run(self) -> None:
        """One envelope every 1/rate seconds until stopped."""
        next_at = time.monotonic()
        while not self._stopping.is_set():
            envelope_id, body = external_envelope(len(self.sent))
            try:
                pipe = self.client.pipeline(transaction=True)
                if self.publish:
                    pipe.publish(TOPIC, body)
                if self.xadd:
                    pipe.xadd(stream_key(TOPIC), {"event": body})
                pipe.execute()
                self.sent.append(envelope_id)
            except redis.RedisError:
                self.failed += 1
            next_at += 1 / self.rate
            self._stopping.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        """Stop publishing."""
        self._stopping.set()
        self._thread.join(timeout=10)


# Waiting and reporting


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float = RECOVERY_TIMEOUT,
    cluster: Cluster | None = None,
    every: float = 0.2,
) -> float | None:
    """Poll until ``condition`` holds; the monotonic time it first held, or None if it never did within ``timeout``.

    With a cluster, waiting ends as soon as none of its workers runs: nothing would recover then.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        if cluster is not None and cluster.workers and not any(worker.running for worker in cluster.workers):
            return None
        time.sleep(every)
    return None


def wait_quiet(sample: Callable[[], object], *, seconds: float = QUIET_SECONDS, timeout: float = 30) -> None:
    """Wait until ``sample()`` has not changed for ``seconds`` (a late resend would change it), at most ``timeout``."""
    deadline = time.monotonic() + timeout
    last, since = sample(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = sample()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return


COLUMNS = (
    "scenario",
    "database",
    "accepted",
    "on the stream",
    "heard on Pub/Sub",
    "recorded",
    "duplicated (stream / Pub/Sub)",
    "lost",
    "recovery s",
    "took s",
    "result",
)


@dataclass
class Row:
    """One scenario's figures and what it found wrong."""

    scenario: str
    accepted: int = 0
    on_stream: int | None = 0
    heard: int | None = 0
    recorded: int = 0
    duplicated_stream: int = 0
    duplicated_pubsub: int = 0
    lost: int = 0
    recovery: float | None = None
    took: float = 0.0
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    database: str = ""

    def cells(self) -> list[str]:
        """The row's cells, in COLUMNS order."""
        recovery = "never" if self.recovery is None else f"{self.recovery:.1f}"
        return [
            self.scenario,
            self.database,
            f"{self.accepted:,}",
            "-" if self.on_stream is None else f"{self.on_stream:,}",
            "-" if self.heard is None else f"{self.heard:,}",
            f"{self.recorded:,}",
            f"{self.duplicated_stream:,} / {self.duplicated_pubsub:,}",
            f"{self.lost:,}",
            recovery,
            f"{self.took:.0f}",
            "pass" if not self.problems else f"FAIL ({len(self.problems)})",
        ]

    def line(self) -> str:
        """The row as one Markdown table line."""
        return "| " + " | ".join(self.cells()) + " |"

    def as_json(self) -> str:
        """The row for bench/chaos.py."""
        return json.dumps({**self.__dict__, "columns": COLUMNS, "cells": self.cells()})


class Report:
    """The rows of a run: printed at the end of the session, and appended to CHAOS_REPORT (JSON lines) if set."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, row: Row) -> None:
        """Keep a row, print it, and write it where bench/chaos.py reads it."""
        self.rows.append(row)
        print(row.line())
        path = os.environ.get("CHAOS_REPORT")
        if path:
            with open(path, "a", encoding="utf-8") as report:
                report.write(row.as_json() + "\n")

    def table(self) -> list[str]:
        """Every row as a Markdown table, with the notes after it."""
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += [row.line() for row in self.rows]
        for row in self.rows:
            lines += [f"- {row.scenario}: {note}" for note in row.notes]
        return lines


def finish(row: Row, *, report: Report, cluster: Cluster, redis_url: str, started: float) -> None:
    """The checks every scenario ends with; then the row is reported and the test fails naming every problem."""
    row.database = database_label()
    row.problems += [f"a process died: {why}" for why in cluster.deaths()]
    cluster.stop()
    if row.problems:
        row.notes += cluster.complaints()
        row.notes.append(f"every process's output: {cluster.logs_keep(row.scenario)}")
    verified = manage("verify_audit_log", redis_url=redis_url, timeout=120)
    if verified.returncode != 0:
        row.problems.append(f"manage.py verify_audit_log failed: {(verified.stdout + verified.stderr).strip()[-800:]}")
    row.took = time.monotonic() - started
    report.add(row)
    assert not row.problems, (
        f"{row.scenario} on {row.database}:\n  "
        + "\n  ".join(row.problems)
        + "\n  "
        + " | ".join(f"{column}: {cell}" for column, cell in zip(COLUMNS, row.cells(), strict=True))
        + ("\n  notes:\n    " + "\n    ".join(row.notes) if row.notes else "")
    )


def api_row(scenario: str, *, heard: PubSubCounter, **counts: Any) -> Row:
    """``api_row_counted``, stopping the counting subscriber afterwards whatever happens (it is the last to use it)."""
    try:
        return api_row_counted(scenario, heard=heard, **counts)
    finally:
        heard.stop()


def api_row_counted(
    scenario: str,
    *,
    load: ApiLoad,
    cluster: Cluster,
    bus: redis.Redis,
    heard: PubSubCounter,
    fault_end: float,
    stream_before: Counter[str] | None = None,
    exempt: set[str] | None = None,
    expect_server_errors: bool = False,
) -> Row:
    """Wait for recovery after an API-load scenario's fault, then count and check everything the API accepted.

    Checks: each accepted id's row says published and it reached the bus (stream or Pub/Sub);
    no id twice on the stream or Pub/Sub (beyond ``exempt``: sends a Redis ran and lost with
    its dataset before answering); each event accepted as pending has its ``event.relay``
    audit entry; no 500 (unless ``expect_server_errors``, where a killed server is the fault).
    """
    row = Row(scenario)
    accepted = set(load.accepted)
    before = stream_before or Counter()

    def on_bus() -> set[str]:
        return set(stream_counts(bus)) | set(before) | set(heard.counts)

    def recovered() -> bool:
        return pending_rows() == 0 and not (accepted - published_ids(accepted)) and not (accepted - on_bus())

    recovered_at = wait_until(recovered, cluster=cluster)
    row.recovery = None if recovered_at is None else max(0.0, recovered_at - fault_end)
    wait_quiet(lambda: (bus.xlen(stream_key(TOPIC)), heard.total, Event.objects.count(), pending_rows()))
    stream = stream_counts(bus) + before
    exempt = exempt or set()
    published = published_ids(accepted)
    reached = set(stream) | set(heard.counts)
    lost = accepted - (published & reached)
    row.accepted, row.on_stream, row.heard = len(accepted), len(stream), len(heard.counts)
    row.recorded = Event.objects.count()
    row.duplicated_stream = duplicates(stream, exempt=exempt)
    row.duplicated_pubsub = duplicates(heard.counts, exempt=exempt)
    row.lost = len(lost)
    pending_accepted = load.accepted_pending
    explained = later_audit_counts(pending_accepted)
    actions = Counter(action for _, action in explained.elements())
    unaudited = sorted(pending_accepted - {envelope_id for envelope_id, _ in explained})
    row.notes.append(
        f"{len(pending_accepted):,} accepted as pending (202) on first sending, their later audit entries "
        f"{dict(actions)}; {len(load.accepted_pending_any - pending_accepted):,} more answered pending on a resend; "
        f"{len(load.server_errors):,} 5xx answers, {load.retry_asked:,} 503s asking for a resend, "
        f"{load.connection_errors:,} broken connections, "
        f"refused {dict(load.refused)}, given up {load.given_up}"
    )
    if exempt:
        row.notes.append(f"{len(exempt):,} sends Redis ran and then lost with its dataset: duplicates not counted")
    retention = Topic.objects.get(name=TOPIC).stream_retention
    if bus.xlen(stream_key(TOPIC)) >= retention:
        row.problems.append(
            f"the scenario filled stream:{TOPIC} to its retention ({retention:,}): trimmed entries cannot be "
            "counted for duplicates; lower the scenario's load"
        )
    if row.recovery is None:
        still = accepted - published
        row.problems.append(
            f"not recovered {RECOVERY_TIMEOUT:.0f}s after the fault: {pending_rows():,} rows still pending, "
            f"{len(still):,} accepted not published, {len(accepted - reached):,} accepted never on the bus"
        )
    if row.duplicated_stream or row.duplicated_pubsub:
        doubled = {i for i in set(stream) | set(heard.counts) if max(stream[i], heard.counts[i]) > 1} - exempt
        twice = sorted(doubled)
        answers = Counter(load.accepted.get(i, "never answered") for i in twice)
        row.problems.append(
            f"duplicates: {row.duplicated_stream:,} extra copies on stream:{TOPIC}, "
            f"{row.duplicated_pubsub:,} heard again on Pub/Sub ({len(twice):,} events, the API had answered "
            f"them {dict(answers)}; e.g. {twice[:3]})"
        )
    if lost:
        row.problems.append(
            f"lost: {len(lost):,} of {len(accepted):,} accepted events are not published in history and on the bus "
            f"({len(accepted - recorded_ids(accepted)):,} with no row, {len(accepted - published):,} not published, "
            f"{len(accepted - reached):,} never on the bus; e.g. {sorted(lost)[:3]})"
        )
    if unaudited:
        row.problems.append(
            f"audit gap: {len(unaudited):,} of {len(pending_accepted):,} events accepted as pending (202) have no "
            f"{RELAY_ACTION} audit entry (nor any other after their publish) saying how they reached the bus "
            f"(e.g. {unaudited[:3]})"
        )
    relayed_again = sorted(i for (i, action), n in explained.items() if action == RELAY_ACTION and n > 1)
    if relayed_again:
        row.problems.append(
            f"{len(relayed_again):,} events have more than one {RELAY_ACTION} audit entry (sent twice?): "
            f"e.g. {relayed_again[:3]}"
        )
    if load.server_errors and not expect_server_errors:
        row.problems.append(f"{len(load.server_errors):,} API answers were 5xx, e.g. {load.server_errors[:2]}")
    if load.given_up:
        row.problems.append(
            f"{load.given_up:,} requests never answered within {GIVE_UP_SECONDS:.0f}s of the load stopping"
        )
    return row


def api_scenario(
    server: RedisServer, token: str, *, clients: int = 4, rate: float = CLIENT_RATE, batch: int = 0
) -> tuple[float, Cluster, PubSubCounter, redis.Redis, ApiLoad]:
    """An API-load scenario's start: two web servers and a worker running, a counting subscriber, the bus, the load.

    The load is made, not started: the scenario starts it, inside the try that stops it.
    """
    started = time.monotonic()
    cluster = Cluster(server, webs=2, workers=1)
    cluster.start()
    heard = PubSubCounter(server.url(0))
    heard.start()
    load = ApiLoad(cluster.ports, token, clients=clients, rate=rate, batch=batch)
    return started, cluster, heard, redis.Redis.from_url(server.url(0)), load
