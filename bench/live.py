"""Publish-to-browser latency of live traffic, events lost from history, and memory per websocket.

Run: ``.venv/bin/python bench/live.py`` (about two minutes). It starts its own redis-server
on a free port, a temporary SQLite database (WAL) with the demo data, production settings
(``DEBUG=0``), and as subprocesses ``uvicorn hmsadmin.asgi:application`` and one
``manage.py bus_worker``, as ``make run`` does.

Clients: N websocket clients in this process's asyncio loop (``websockets``, offering
permessage-deflate as browsers do; the server, as the Procfile runs it, declines), signed in as the demo user ``policy``
(a session made in the shared database), each subscribed to ``tax-policy`` and
acknowledging every frame at once. A client notes ``time.time()`` when each frame arrives.

Publisher: a separate process (``--publisher thread`` runs it in a thread of this one
instead) calling ``event_publish`` at a paced rate; at a rate it cannot sustain one event
at a time, ``event_publish_batch`` every 10 ms as well. An event's publish time is when
the call that published it returned.

Latency = a client's receipt of the event - its publish time, for every event and client.
A probe in this process, a Channels channel added to the topic's group, times the arrival
of the worker's group messages too (publish to channel layer), which splits the path in
two: worker and layer, then uvicorn and the websocket. "Lost from history": published
events not in the Event table after the run (must be 0).

Memory: the uvicorn process's VmRSS with no websocket open, then with 50 clients connected,
subscribed and idle; the difference divided by 50. Those 50 then stay idle 7 s in all: the
sockets the server drops meanwhile are counted (see bench/README.md), and connected again.
Each run also reports the CPU of every process, and of the rest of the machine ("others").

Experiments (each changes one thing and says so in the output; the default is the product
as shipped): ``--fanout-interval``, ``--no-dispatch-hop``, ``--layer-socket-timeout``,
``--env NAME=VALUE``, ``--no-compression``, ``--publisher thread``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import OutputWatcher, RedisServer, free_port, wait_for  # noqa: E402

TOPIC = "tax-policy"
EVENT_TYPE = "tax_policy.updated"
USERNAME = "policy"
PASSWORD = "bench-password-123"
AIM_MS = 100.0
AIM_RATE = 1000
AIM_CLIENTS = 50
MEMORY_CLIENTS = 50
IDLE_SECONDS = 7.0  # clients connected and idle: memory read after 4 s, dropped sockets counted at the end
SECRET_KEY = "bench-only-secret-key"
SUSTAINED = 0.95  # a publisher reaching this share of the target rate sustained it


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="10,100,1000", help="events/s to publish, comma-separated")
    parser.add_argument("--clients", default="1,50", help="connected clients, comma-separated")
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="publishing time per run (at least 100 events: 10 s at 10/s)"
    )
    parser.add_argument(
        "--publisher",
        choices=["process", "thread"],
        default="process",
        help="publish from a separate process (default) or a thread of the clients' process",
    )
    parser.add_argument(
        "--mode",
        choices=["auto", "single", "batch"],
        default="auto",
        help="auto: event_publish, and event_publish_batch as well where single publishes fall short of the rate",
    )
    parser.add_argument("--batch-ms", type=float, default=10.0, help="batch mode: one event_publish_batch this often")
    parser.add_argument(
        "--fanout-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="experiment: run the worker with busapp.worker.fanout.FANOUT_INTERVAL patched to this",
    )
    parser.add_argument(
        "--layer-socket-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="experiment: CHANNEL_LAYER_URL with ?socket_timeout= (with the list-based layer used until 2026-11-28, "
        "redis-py 8's default of 5 s equalled its BZPOPMIN timeout, so an idle consumer's receive failed; "
        "see bench/README.md)",
    )
    parser.add_argument(
        "--no-dispatch-hop",
        action="store_true",
        help="experiment: uvicorn with channels.consumer.aclose_old_connections a no-op, so a consumer's dispatch "
        "does not wait for a round trip through the one sync thread (Channels 4.2+ makes one per message)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="experiment: a setting from the environment for every process (e.g. DATABASE_CONN_MAX_AGE=600)",
    )
    parser.add_argument("--no-compression", action="store_true", help="clients do not offer permessage-deflate")
    parser.add_argument("--child-publisher", help=argparse.SUPPRESS)  # internal: the publisher process
    return parser.parse_args()


# Setup: environment, database, demo data.


def _environment(
    database_url: str, redis_url: str, var_dir: str, layer_socket_timeout: float | None = None
) -> dict[str, str]:
    """What this process and its subprocesses run with: the bench's database and Redis, production settings."""
    layer = {}
    if layer_socket_timeout is not None:
        layer["CHANNEL_LAYER_URL"] = f"{redis_url.rsplit('/', 1)[0]}/1?socket_timeout={layer_socket_timeout:g}"
    return {
        **layer,
        "DJANGO_SETTINGS_MODULE": "hmsadmin.settings",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DEBUG": "0",
        "SECRET_KEY": SECRET_KEY,
        "ALLOWED_HOSTS": "127.0.0.1",
        "VAR_DIR": var_dir,
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "WARNING",
    }


def _setup(environment: dict[str, str]) -> None:
    """Set Django up against the bench's database and Redis, migrate and load the demo data."""
    os.environ.update(environment)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    with open(os.devnull, "w") as quiet:
        call_command("load_demo", password=PASSWORD, stdout=quiet)


def _session_cookie() -> str:
    """A session for the demo user ``policy``, made in the shared database: the Cookie header a browser sends."""
    from django.contrib.auth.models import User
    from django.test import Client

    client = Client()
    client.force_login(User.objects.get(username=USERNAME))
    return f"sessionid={client.cookies['sessionid'].value}"


# The publisher.


def publish_paced(rate: float, seconds: float, mode: str, batch_ms: float) -> dict[str, Any]:
    """Publish ``rate`` events/s for ``seconds``; every event's id and the wall time its call returned."""
    from busapp.actions.publishing import event_publish, event_publish_batch

    total = max(1, round(rate * seconds))
    published: list[tuple[str, float]] = []
    late_max = 0.0
    cpu = time.thread_time()
    start = time.perf_counter()
    if mode == "single":
        for n in range(total):
            late = time.perf_counter() - (start + n / rate)
            if late < 0:
                time.sleep(-late)
            late_max = max(late_max, late)
            event = event_publish(
                topic=TOPIC, event_type=EVENT_TYPE, payload={"standard_deduction": n}, actor="bench", source="api"
            )
            published.append((event.envelope_id, time.time()))
    else:
        per_call = max(1, round(rate * batch_ms / 1000))
        for call in range(math.ceil(total / per_call)):
            late = time.perf_counter() - (start + call * per_call / rate)
            if late < 0:
                time.sleep(-late)
            late_max = max(late_max, late)
            first = call * per_call
            items = [
                {"type": EVENT_TYPE, "payload": {"standard_deduction": n}}
                for n in range(first, min(total, first + per_call))
            ]
            outcome = event_publish_batch(topic=TOPIC, items=items, actor="bench", source="api")
            returned = time.time()
            published.extend((event.envelope_id, returned) for event in outcome.events)
    elapsed = time.perf_counter() - start
    return {
        "published": published,
        "seconds": elapsed,
        "late_max": late_max,
        "cpu": time.thread_time() - cpu,
    }


def _warm_up() -> None:
    """One publish: compiled validator, database and Redis connections made before anything is timed."""
    publish_paced(1, 1, "single", 10)


def _child_publisher(spec: str) -> None:
    """The publisher process: set up, say ready, publish when told, print the outcome as one JSON line."""
    import django

    django.setup()
    options = json.loads(spec)
    _warm_up()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    outcome = publish_paced(options["rate"], options["seconds"], options["mode"], options["batch_ms"])
    print(json.dumps(outcome), flush=True)


# Processes.


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy so far (/proc/stat: all but idle and iowait)."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int, name: str = "VmRSS") -> int:
    """A memory figure of a process from /proc (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise LookupError(name)


# uvicorn's own command line, after a patch: Channels' per-dispatch close_old_connections made a no-op.
_NO_DISPATCH_HOP = """
import sys
import channels.consumer

async def _skip():
    return None

channels.consumer.aclose_old_connections = _skip
from uvicorn.main import main
sys.argv[0] = "uvicorn"
main()
"""


# The Procfile's own uvicorn flags, so the bench serves websockets as `make run` does.
_PROCFILE_WEB_FLAGS = ["--ws-per-message-deflate", "false"]


def _start_uvicorn(env: dict[str, str], port: int, no_dispatch_hop: bool = False) -> OutputWatcher:
    """The uvicorn server, serving the ASGI app as the Procfile runs it (uvloop, httptools, no permessage-deflate)."""
    command = [sys.executable, "-c", _NO_DISPATCH_HOP] if no_dispatch_hop else [sys.executable, "-m", "uvicorn"]
    command += ["hmsadmin.asgi:application", "--host", "127.0.0.1", *_PROCFILE_WEB_FLAGS]
    command += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return OutputWatcher(process)


def _start_worker(env: dict[str, str], fanout_interval: float | None) -> OutputWatcher:
    """``manage.py bus_worker``; with ``fanout_interval``, the same command with the fan-out interval patched."""
    if fanout_interval is None:
        command = [sys.executable, str(ROOT / "manage.py"), "bus_worker"]
    else:
        patched = (
            "import sys, django; django.setup(); import busapp.worker.fanout as w; "
            "w.FANOUT_INTERVAL = float(sys.argv[1]); "
            "from django.core.management import call_command; call_command('bus_worker')"
        )
        command = [sys.executable, "-c", patched, str(fanout_interval)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return OutputWatcher(process)


def _answers(url: str) -> bool:
    """True when the web server answers its health check, 200 or 503 (no worker beats yet: a bench may start none)."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:  # noqa: S310 (our own server)
            return bool(response.status == 200)
    except urllib.error.HTTPError as error:
        return error.code == 503
    except OSError:
        return False


# The websocket clients.


@dataclass
class LiveClient:
    """One browser's websocket: subscribed to the topic, acknowledging every frame, noting when each item came."""

    url: str
    origin: str
    cookie: str
    compression: bool
    received: dict[str, float] = field(default_factory=dict)
    frames: int = 0
    skipped: int = 0
    duplicates: int = 0
    other: list[dict[str, Any]] = field(default_factory=list)
    closed: str = ""
    socket: Any = None
    task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Connect with the session cookie and an allowed Origin, subscribe, wait for the confirmation."""
        from websockets.asyncio.client import connect
        from websockets.typing import Origin

        self.socket = await connect(
            self.url,
            origin=Origin(self.origin),
            additional_headers={"Cookie": self.cookie},
            compression="deflate" if self.compression else None,
            max_size=None,
            open_timeout=20,
        )
        await self.socket.send(json.dumps({"action": "subscribe", "topics": [TOPIC]}))
        reply = json.loads(await asyncio.wait_for(self.socket.recv(), 20))
        if reply != {"type": "subscribed", "topics": [TOPIC]}:
            raise RuntimeError(f"subscribe answered {reply}")
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        """Note each frame's arrival, acknowledge it, keep its items' arrival times."""
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in self.socket:
                arrived = time.time()
                frame = json.loads(message)
                if frame.get("type") != "events":
                    self.other.append(frame)
                    continue
                await self.socket.send(json.dumps({"action": "ack", "seq": frame["seq"]}))
                self.frames += 1
                self.skipped += frame["skipped"]
                for item in frame["items"]:
                    if item["id"] in self.received:
                        self.duplicates += 1
                    else:
                        self.received[item["id"]] = arrived
        except ConnectionClosed as closed:
            self.closed = str(closed)

    def reset(self) -> None:
        """Forget what arrived so far (between runs)."""
        self.received, self.frames, self.skipped, self.duplicates = {}, 0, 0, 0

    async def close(self) -> None:
        """Close the socket and wait for the reader."""
        if self.socket is not None:
            await self.socket.close()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


class LayerProbe:
    """A Channels channel in the topic's group, in this process: when the worker's group messages reach the layer."""

    def __init__(self) -> None:
        self.received: dict[str, float] = {}
        self.layer: Any = None
        self.channel = ""
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        self.failures: list[str] = []  # receives that raised (and were made again)

    async def open(self) -> None:
        """Join the topic's group and start receiving."""
        from channels.layers import get_channel_layer

        from busapp.live import topic_group

        self.layer = get_channel_layer()
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(topic_group(TOPIC), self.channel)
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        """Note when each item arrives."""
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except Exception as error:  # a cancelled receive comes out as redis's TimeoutError
                if self.stopping:
                    return
                self.failures.append(repr(error))
                await asyncio.sleep(0.01)
                continue
            arrived = time.time()
            for item in message.get("items", []):  # each item's JSON text (busapp.live.live_message)
                self.received.setdefault(json.loads(item)["id"], arrived)

    async def close(self) -> None:
        """Leave the group."""
        from busapp.live import topic_group

        self.stopping = True
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.layer.group_discard(topic_group(TOPIC), self.channel)


# One run: a rate, a number of clients, a way of publishing.


@dataclass
class Run:
    """What one run measured."""

    clients: int
    rate: int
    mode: str
    published: list[tuple[str, float]]
    seconds: float
    late_max: float
    latencies: list[float]  # ms, every (event, client) received
    probe: list[float]  # ms, publish to channel layer
    received: list[int]  # distinct published events each client received
    frames: int
    skipped: int
    duplicates: int
    cpu: dict[str, float]  # share of one core over the run, per process
    wall: float
    dropped: int = 0  # sockets the server closed during the run
    lost: int = -1
    unpublished: int = -1

    @property
    def achieved(self) -> float:
        """Events per second the publisher reached."""
        return len(self.published) / self.seconds if self.seconds else 0.0


def _p(values: list[float], percent: float) -> float:
    """The ``percent`` percentile (nearest rank) of sorted values; NaN when there are none."""
    if not values:
        return math.nan
    return values[max(0, math.ceil(len(values) * percent / 100) - 1)]


class Bench:
    """The web server, the worker and the clients of one benchmark."""

    def __init__(self, arguments: argparse.Namespace, env: dict[str, str], port: int, pids: dict[str, int]) -> None:
        self.arguments = arguments
        self.env = env
        self.url = f"ws://127.0.0.1:{port}/ws/traffic/"
        self.origin = f"http://127.0.0.1:{port}"
        self.pids = pids
        self.cookie = ""
        self.clients: list[LiveClient] = []
        self.probe = LayerProbe()
        self.runs: list[Run] = []
        self.memory: dict[str, int] = {}
        self.publisher: asyncio.subprocess.Process | None = None
        self._cpu_start: dict[str, float] = {}
        self._wall_start = 0.0
        self.reconnects = 0

    async def connect(self, count: int) -> None:
        """Open clients until ``count`` are connected (a few at a time, as browsers would arrive)."""
        while len(self.clients) < count:
            batch = [
                LiveClient(self.url, self.origin, self.cookie, not self.arguments.no_compression)
                for _ in range(min(10, count - len(self.clients)))
            ]
            await asyncio.gather(*(client.open() for client in batch))
            self.clients.extend(batch)

    async def reopen(self, *, quiet: bool = False) -> int:
        """Connect again the clients whose socket the server dropped (as the live page does); how many."""
        dropped = [client for client in self.clients if client.task is not None and client.task.done()]
        for client in dropped:
            self.clients.remove(client)
            if not quiet:
                print(f"  a socket was dropped between runs ({client.closed}); connecting again", flush=True)
                self.reconnects += 1
        await self.connect(len(self.clients) + len(dropped))
        return len(dropped)

    async def disconnect(self, keep: int) -> None:
        """Close clients until ``keep`` remain."""
        leaving, self.clients = self.clients[keep:], self.clients[:keep]
        await asyncio.gather(*(client.close() for client in leaving))

    async def measure_memory(self) -> None:
        """The uvicorn server's RSS with no websocket, then with MEMORY_CLIENTS connected, subscribed and idle."""
        uvicorn = self.pids["uvicorn"]
        await self.connect(1)  # the first websocket loads what every later one shares
        await self.disconnect(0)
        await asyncio.sleep(1.0)
        self.memory["before"] = _rss_kib(uvicorn)
        await self.connect(MEMORY_CLIENTS)
        await asyncio.sleep(1.0)
        cpu, wall = _cpu_seconds(uvicorn), time.perf_counter()
        await asyncio.sleep(3.0)
        self.memory["idle_cpu_percent"] = round((_cpu_seconds(uvicorn) - cpu) / (time.perf_counter() - wall) * 100)
        self.memory["after"] = _rss_kib(uvicorn)
        # Nothing reaches uvicorn's channel layer for 5 s and more: does an idle socket stay open?
        await asyncio.sleep(IDLE_SECONDS - 4.0)
        self.memory["idle_drops"] = sum(client.task is not None and client.task.done() for client in self.clients)
        await self.reopen(quiet=True)  # counted above, not as a drop between runs

    async def _publish(self, rate: int, seconds: float, mode: str) -> dict[str, Any]:
        """Publish from a separate process (or a thread here), reset the clients the moment it starts."""
        options = {"rate": rate, "seconds": seconds, "mode": mode, "batch_ms": self.arguments.batch_ms}
        if self.arguments.publisher == "thread":
            await self.reopen()
            self._reset()
            return await asyncio.to_thread(publish_paced, rate, seconds, mode, self.arguments.batch_ms)
        self.publisher = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            "--child-publisher",
            json.dumps(options),
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=256 * 1024 * 1024,  # the outcome is one JSON line: every event's id and time
        )
        assert self.publisher.stdin is not None
        assert self.publisher.stdout is not None
        try:
            line = await asyncio.wait_for(self.publisher.stdout.readline(), 60)
            if line.strip() != b"ready":
                raise RuntimeError(f"the publisher said {line!r}")
            await asyncio.sleep(0.5)  # the warm-up event has gone by
            await self.reopen()
            self._reset()
            self.pids["publisher"] = self.publisher.pid
            self._cpu_start["publisher"] = _cpu_seconds(self.publisher.pid)
            self.publisher.stdin.write(b"go\n")
            await self.publisher.stdin.drain()
            outcome: dict[str, Any] = json.loads(await self.publisher.stdout.readline())
            await self.publisher.wait()
            return outcome
        finally:
            if self.publisher.returncode is None:
                self.publisher.kill()
                await self.publisher.wait()
            self.pids.pop("publisher", None)
            self.publisher = None

    def _reset(self) -> None:
        """Forget what clients and probe received; start the CPU clocks."""
        for client in self.clients:
            client.reset()
        self.probe.received = {}
        self._cpu_start = {name: _cpu_seconds(pid) for name, pid in self.pids.items()}
        self._cpu_start["clients"] = time.process_time()
        self._cpu_start["machine"] = _machine_busy_seconds()
        self._wall_start = time.perf_counter()

    async def _drain(self, ids: list[str]) -> None:
        """Wait until every client has the last event, or nothing more arrives for 1.5 s."""
        # Frames arrive in order: once every client has the last event, it has had its chance at all of them.
        quiet_since, last_count = time.perf_counter(), -1
        while ids and time.perf_counter() - quiet_since < 1.5:
            if all(ids[-1] in client.received for client in self.clients):
                return
            count = sum(len(client.received) for client in self.clients)
            if count != last_count:
                quiet_since, last_count = time.perf_counter(), count
            await asyncio.sleep(0.02)

    async def run(self, rate: int, mode: str) -> Run:
        """One run: publish, wait until every client has every event (or nothing more comes), gather the figures."""
        seconds = max(self.arguments.seconds, 100 / rate)
        self._cpu_start = {}
        # This process's own garbage collections would delay the clients' receipt times: none during a run.
        gc.collect()
        gc.disable()
        try:
            outcome = await self._publish(rate, seconds, mode)
            await self._drain([event_id for event_id, _ in outcome["published"]])
        finally:
            gc.enable()
        published = [(event_id, returned) for event_id, returned in outcome["published"]]
        ids = [event_id for event_id, _ in published]
        wall = time.perf_counter() - self._wall_start
        cpu = {
            name: (_cpu_seconds(pid) - self._cpu_start[name]) / wall
            for name, pid in self.pids.items()
            if name in self._cpu_start and name in self.pids
        }
        cpu["clients"] = (time.process_time() - self._cpu_start["clients"]) / wall
        cpu["machine"] = (_machine_busy_seconds() - self._cpu_start["machine"]) / wall
        if self.arguments.publisher == "process":
            cpu["publisher"] = outcome["cpu"] / wall
        else:
            cpu["clients"] -= outcome["cpu"] / wall
            cpu["publisher"] = outcome["cpu"] / wall
        latencies: list[float] = []
        for client in self.clients:
            for event_id, returned in published:
                arrived = client.received.get(event_id)
                if arrived is not None:
                    latencies.append((arrived - returned) * 1000)
        probe = [
            (self.probe.received[event_id] - returned) * 1000
            for event_id, returned in published
            if event_id in self.probe.received
        ]
        published_ids = set(ids)
        run = Run(
            clients=len(self.clients),
            rate=rate,
            mode=mode,
            published=published,
            seconds=outcome["seconds"],
            late_max=outcome["late_max"],
            latencies=sorted(latencies),
            probe=sorted(probe),
            received=[len(published_ids & client.received.keys()) for client in self.clients],
            frames=sum(client.frames for client in self.clients),
            skipped=sum(client.skipped for client in self.clients),
            duplicates=sum(client.duplicates for client in self.clients),
            cpu=cpu,
            wall=wall,
            dropped=sum(client.task is not None and client.task.done() for client in self.clients),
        )
        self.runs.append(run)
        _print_run(run)
        await asyncio.sleep(0.5)
        return run

    async def all_runs(self) -> None:
        """Memory first (a fresh server), then every clients x rate, largest client count first."""
        from asgiref.sync import sync_to_async

        self.cookie = await sync_to_async(_session_cookie)()
        await self.probe.open()
        try:
            await self.measure_memory()
            rates = [int(rate) for rate in self.arguments.rates.split(",")]
            for count in sorted((int(clients) for clients in self.arguments.clients.split(",")), reverse=True):
                if count > len(self.clients):
                    await self.connect(count)
                else:
                    await self.disconnect(count)
                for rate in rates:
                    if self.arguments.mode != "auto":
                        await self.run(rate, self.arguments.mode)
                        continue
                    single = await self.run(rate, "single")
                    if single.achieved < SUSTAINED * rate:
                        await self.run(rate, "batch")
            for client in self.clients:
                if client.other or client.closed:
                    print(f"client saw: {client.other[:3]} closed={client.closed!r}")
        finally:
            await self.stop_publisher()
            await self.disconnect(0)
            await self.probe.close()

    async def stop_publisher(self) -> None:
        """Kill a publisher left running by an error or Ctrl-C."""
        if self.publisher is not None and self.publisher.returncode is None:
            self.publisher.kill()
            await self.publisher.wait()


def _mode_name(run: Run, batch_ms: float) -> str:
    if run.mode == "single":
        return "single"
    return f"batch {max(1, round(run.rate * batch_ms / 1000))}/{batch_ms:g}ms"


def _print_run(run: Run) -> None:
    """A line as each run ends, so a long run shows progress."""
    print(
        f"  {run.clients:>3} clients, {run.rate:>5}/s {run.mode:<6}: published {len(run.published):,} "
        f"({run.achieved:,.0f}/s, at most {run.late_max * 1000:.0f} ms behind its pace), "
        f"p50 {_p(run.latencies, 50):.1f} ms, p99 {_p(run.latencies, 99):.1f} ms",
        flush=True,
    )


def _history_check(runs: list[Run]) -> None:
    """Published events missing from the Event table, and those not marked published."""
    from busapp.models import Event, EventStatus

    for run in runs:
        ids = [event_id for event_id, _ in run.published]
        found, published = 0, 0
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = Event.objects.filter(envelope_id__in=chunk)
            found += rows.count()
            published += rows.filter(status=EventStatus.PUBLISHED).count()
        run.lost, run.unpublished = len(ids) - found, found - published


def _revision() -> str:
    """The commit measured, and whether the working tree differed from it (read-only git commands)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"{commit}{' with uncommitted changes' if changed else ''}"


def _report(bench: Bench, arguments: argparse.Namespace, logs: dict[str, OutputWatcher]) -> None:
    """The figures, the memory and the aim."""
    print()
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"load average at the end: {', '.join(f'{load:.2f}' for load in os.getloadavg())}")
    print(f"code: {_revision()}" + (f"; environment set: {', '.join(arguments.env)}" if arguments.env else ""))
    print(
        f"publisher: {arguments.publisher}; clients: websockets in one asyncio process, "
        f"{'not offering compression' if arguments.no_compression else 'offering permessage-deflate'} "
        "(the server declines, as the Procfile runs it); "
        f"fan-out interval: {arguments.fanout_interval if arguments.fanout_interval is not None else 'as shipped'}; "
        f"CHANNEL_LAYER_URL: {os.environ.get('CHANNEL_LAYER_URL', 'REDIS_URL with database 1 (as shipped)')}; "
        f"per-dispatch close_old_connections: {'skipped (experiment)' if arguments.no_dispatch_hop else 'as shipped'}"
    )
    print()
    header = (
        f"{'clients':>7} {'rate/s':>6} {'publish':<12} {'reached/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
        f" {'layer p50':>9} {'p99':>6} {'received/client':>17} {'frames':>7} {'skipped':>7} {'lost':>5}"
    )
    print(header)
    for run in bench.runs:
        received = f"{min(run.received)}..{max(run.received)}/{len(run.published)}" if run.received else "-"
        worst = run.latencies[-1] if run.latencies else math.nan
        print(
            f"{run.clients:>7} {run.rate:>6} {_mode_name(run, arguments.batch_ms):<12} {run.achieved:>9,.0f}"
            f" {_p(run.latencies, 50):>7.1f} {_p(run.latencies, 99):>7.1f} {worst:>7.1f}"
            f" {_p(run.probe, 50):>9.1f} {_p(run.probe, 99):>6.1f} {received:>17} {run.frames:>7} {run.skipped:>7}"
            f" {run.lost:>5}"
        )
    print("(latency: publish call returned -> client received, every event x client; layer: -> the probe's channel)")
    print()
    names = ["publisher", "worker", "uvicorn", "redis", "clients"]
    print(
        f"{'CPU, % of one core':<28}"
        + "".join(f"{name:>10}" for name in names)
        + f"{'bench':>7}{'others':>8}{'machine':>9}{'uvicorn us/item':>17}"
    )
    for run in bench.runs:
        label = f"{run.clients} clients {run.rate}/s {run.mode}"
        shares = [run.cpu.get(name, 0.0) * 100 for name in names]
        machine = run.cpu["machine"] * 100
        delivered = sum(run.received)
        per_item = run.cpu["uvicorn"] * run.wall / delivered * 1e6 if delivered else math.nan
        print(
            f"{label:<28}"
            + "".join(f"{share:>10.0f}" for share in shares)
            + f"{sum(shares):>7.0f}{machine - sum(shares):>8.0f}{machine:>9.0f}{per_item:>17.0f}"
        )
    print(
        f"(others: what else ran on the machine meanwhile; machine: all {os.cpu_count()} cores busy; "
        "uvicorn us/item: its CPU time per event delivered to one client)"
    )
    if any(run.duplicates or run.unpublished or run.dropped for run in bench.runs):
        print()
        for run in bench.runs:
            print(
                f"{run.clients} clients {run.rate}/s {run.mode}: duplicates {run.duplicates}, "
                f"not marked published {run.unpublished}, sockets dropped during the run {run.dropped}"
            )
    if bench.probe.failures:
        print(f"the probe's channel layer receive raised {len(bench.probe.failures)} times: {bench.probe.failures[0]}")
    if bench.reconnects:
        print(f"sockets the server dropped between runs (idle), connected again: {bench.reconnects}")
    print()
    before, after = bench.memory["before"], bench.memory["after"]
    print(
        f"memory: uvicorn VmRSS {before / 1024:.1f} MiB with no websocket, {after / 1024:.1f} MiB with "
        f"{MEMORY_CLIENTS} subscribed and idle: {(after - before) / MEMORY_CLIENTS:.0f} KiB per connection"
    )
    print(
        f"uvicorn CPU with {MEMORY_CLIENTS} subscribed and idle clients (no events): "
        f"{bench.memory['idle_cpu_percent']}% of one core"
    )
    print(
        f"idle sockets the server dropped within {IDLE_SECONDS:.0f} s without events: "
        f"{bench.memory['idle_drops']} of {MEMORY_CLIENTS}"
        + (
            " (channels_redis's receive failing on redis-py's 5 s socket timeout; see bench/README.md)"
            if bench.memory["idle_drops"]
            else ""
        )
    )
    print(
        f"uvicorn peak (VmHWM) {_rss_kib(bench.pids['uvicorn'], 'VmHWM') / 1024:.1f} MiB, "
        f"worker peak {_rss_kib(bench.pids['worker'], 'VmHWM') / 1024:.1f} MiB"
    )
    lost = sum(run.lost for run in bench.runs)
    print(f"lost from history, all runs: {lost} (must be 0)")
    aimed = [run for run in bench.runs if run.rate == AIM_RATE and run.clients == AIM_CLIENTS]
    for run in aimed:
        reached = run.achieved >= SUSTAINED * run.rate
        met = reached and _p(run.latencies, 99) < AIM_MS and run.lost == 0
        print(
            f"aim: p99 under {AIM_MS:.0f} ms at {AIM_RATE:,} events/s with {AIM_CLIENTS} clients "
            f"({_mode_name(run, arguments.batch_ms)}, {run.achieved:,.0f}/s reached): "
            f"{'met' if met else 'NOT met'}, p99 {_p(run.latencies, 99):.1f} ms"
        )
    for name, watcher in logs.items():
        odd = [line for line in watcher.lines if "Traceback" in line or "Error" in line or "ERROR" in line]
        if odd:
            print()
            print(f"{name} printed errors ({len(odd)} lines); its output:")
            print("\n".join(watcher.lines[-60:]))


def main() -> None:
    """Start everything, run every clients x rate, stop everything, print the figures."""
    arguments = _arguments()
    if arguments.child_publisher:
        _child_publisher(arguments.child_publisher)
        return
    redis_server = RedisServer()
    workdir = tempfile.mkdtemp(prefix="hms-bench-live-")
    logs: dict[str, OutputWatcher] = {}
    try:
        redis_server.start()
        database_url = f"sqlite:///{workdir}/bench.sqlite3"
        env = _environment(database_url, redis_server.url(0), workdir, arguments.layer_socket_timeout)
        env.update(setting.split("=", 1) for setting in arguments.env)
        _setup(env)
        _warm_up()
        port = free_port()
        logs["uvicorn"] = _start_uvicorn({**os.environ, **env}, port, arguments.no_dispatch_hop)
        logs["worker"] = _start_worker({**os.environ, **env}, arguments.fanout_interval)
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}"), timeout=30, what="uvicorn to answer")
        logs["worker"].wait_for_line("running", timeout=30)
        assert redis_server.process is not None
        pids = {
            "uvicorn": logs["uvicorn"].process.pid,
            "worker": logs["worker"].process.pid,
            "redis": redis_server.process.pid,
        }
        bench = Bench(arguments, env, port, pids)
        print(f"uvicorn on port {port}, bus worker and redis-server running; runs:", flush=True)

        asyncio.run(bench.all_runs())
        _history_check(bench.runs)
        _report(bench, arguments, logs)
    finally:
        for watcher in logs.values():
            watcher.stop()
        redis_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(redis_server.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
