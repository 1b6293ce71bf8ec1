"""Redis high availability: with REDIS_SENTINELS the bus and the Channels layer follow a failover.

A real master, a replica and three Sentinels (``redis-server --sentinel``) on loopback; the master
is SIGKILLed while events are being published.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import redis
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.db import connection

from busapp.models import AuditEntry, Event, EventStatus
from busapp.publishing import relay_pending, stream_key
from busapp.redis_connections import bus_async_client_new
from tests.support import ROOT, free_port, publish_deduction, redis_server_binary, wait_for

MASTER_NAME = "hms-bus"


class SentinelCluster:
    """A master, one replica and three Sentinels watching them, each a real process on a free loopback port."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="hms-test-sentinel-"))
        self.master_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        """Start the master and its replica, then the Sentinels once the replica is in sync."""
        self._server(self.master_port)
        self._server(self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port))
        wait_for(
            lambda: self.client(self.replica_port).info("replication").get("master_link_status") == "up",
            timeout=20,
            what="the replica to sync with the master",
        )
        for port in self.sentinel_ports:
            config = self.workdir / f"sentinel-{port}.conf"  # a Sentinel rewrites its own config file
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 2000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self._spawn(port, [redis_server_binary(), str(config), "--sentinel"])
        # A failover needs each Sentinel to know the replica and a majority of the other Sentinels.
        wait_for(
            lambda: all(self._sees_everyone(port) for port in self.sentinel_ports),
            timeout=30,
            what="the Sentinels to find the replica and each other",
        )

    def _server(self, port: int, *options: str) -> None:
        command = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        command += ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0", *options]
        self._spawn(port, command)
        wait_for(lambda: self._answers(port), timeout=10, what=f"redis-server on port {port}")

    def _spawn(self, port: int, command: list[str]) -> None:
        self.processes[port] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def _answers(self, port: int) -> bool:
        try:
            return bool(self.client(port).ping())
        except redis.RedisError:
            return False

    def _sees_everyone(self, port: int) -> bool:
        try:
            state: Any = self.client(port).sentinel_master(MASTER_NAME)
        except redis.RedisError:
            return False
        return int(state["num-slaves"]) == 1 and int(state["num-other-sentinels"]) == 2

    def client(self, port: int) -> redis.Redis:
        """A plain client on one of the processes."""
        return redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=2)

    def masters_named(self) -> set[int]:
        """The master's port according to each Sentinel that answers."""
        ports = set()
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError):
                address: Any = self.client(port).sentinel_get_master_addr_by_name(MASTER_NAME)
                ports.add(int(address[1]))
        return ports

    def kill_master(self) -> None:
        """SIGKILL the master: no shutdown, no goodbye to its clients or its replica."""
        process = self.processes.pop(self.master_port)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        """Stop every process and remove the working folder."""
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[SentinelCluster]:
    """A running master, replica and three Sentinels."""
    running = SentinelCluster()
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture
def sentinel_settings(settings: Any, cluster: SentinelCluster) -> Any:
    """The bus configured through the Sentinels only: REDIS_URL's own address has nothing listening."""
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    settings.REDIS_SENTINELS = [("127.0.0.1", port) for port in cluster.sentinel_ports]
    settings.REDIS_SENTINEL_MASTER = MASTER_NAME
    return settings


def _channel_layers_from_settings(cluster: SentinelCluster) -> dict[str, Any]:
    """CHANNEL_LAYERS as hmsadmin/settings.py builds it from REDIS_SENTINELS, in a process of its own."""
    sentinels = ",".join(f"127.0.0.1:{port}" for port in cluster.sentinel_ports)
    script = (
        "import json, django; django.setup(); from django.conf import settings; "
        "print(json.dumps(settings.CHANNEL_LAYERS, default=lambda value: None))"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "hmsadmin.settings",
        "REDIS_SENTINELS": sentinels,
        "REDIS_SENTINEL_MASTER": MASTER_NAME,
    }
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    layers: dict[str, Any] = json.loads(done.stdout)
    return layers


class _Loop:
    """An event loop in a thread of its own, so an async Channels layer lives across the test's steps."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def submit(self, coroutine: Any) -> Future[Any]:
        """Run a coroutine on the loop; its result arrives in the returned future."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Any, timeout: float = 10) -> Any:
        """Run a coroutine on the loop and wait for its result."""
        return self.submit(coroutine).result(timeout)

    def close(self) -> None:
        """Stop the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class _Publisher(threading.Thread):
    """Publishes the seed's event through the service, one after another, until told to stop."""

    def __init__(self, limit: int) -> None:
        super().__init__(daemon=True)
        self.limit = limit
        self.accepted: list[str] = []
        self.errors: list[BaseException] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopping.is_set() and len(self.accepted) < self.limit:
                event = publish_deduction(len(self.accepted))
                self.accepted.append(str(event.envelope_id))
        except BaseException as error:  # the test reports it
            self.errors.append(error)
        finally:
            connection.close()


def _stream_ids(client: Any) -> collections.Counter[str]:
    """How many times each envelope id is on the tax-policy stream."""
    return collections.Counter(
        json.loads(fields[b"event"])["id"] for _, fields in client.xrange(stream_key("tax-policy"))
    )


@pytest.mark.usefixtures("demo_committed")
def test_a_sentinel_failover_under_publish_load_loses_nothing_and_doubles_nothing(cluster, sentinel_settings, client):
    layer_config = _channel_layers_from_settings(cluster)["default"]["CONFIG"]
    assert layer_config["hosts"][0]["master_name"] == MASTER_NAME
    loop = _Loop()
    layer = RedisPubSubChannelLayer(**layer_config)
    page = loop.run(layer.new_channel())
    loop.run(layer.group_add("failover", page))
    loop.run(layer.group_send("failover", {"type": "bus.events", "n": 0}))
    assert loop.run(layer.receive(page))["n"] == 0
    assert client.get("/healthz").json()["redis"] is True

    publisher = _Publisher(limit=5_000)
    publisher.start()
    try:
        wait_for(lambda: len(publisher.accepted) >= 100 or publisher.errors, timeout=60, what="100 events published")
        old_master = cluster.master_port
        cluster.kill_master()
        health_during = client.get("/healthz").json()
        if cluster.masters_named() == {old_master}:  # no Sentinel had promoted the replica yet
            assert health_during["redis"] is False, "healthz said Redis answers while the master was dead"
        wait_for(
            lambda: cluster.masters_named() == {cluster.replica_port},
            timeout=60,
            what="the Sentinels to promote the replica",
        )
        after_failover = len(publisher.accepted)
        wait_for(
            lambda: len(publisher.accepted) >= after_failover + 100 or publisher.errors,
            timeout=60,
            what="100 more events published after the failover",
        )
    finally:
        publisher.stopping.set()
        publisher.join(timeout=60)
    assert not publisher.errors, publisher.errors

    # What could not go out while there was no master is pending; the relay sends it to the new one.
    def nothing_pending() -> bool:
        relay_pending()
        return not Event.objects.filter(status=EventStatus.PENDING).exists()

    wait_for(nothing_pending, timeout=60, what="the relay to send every pending event")

    new_master = cluster.client(cluster.replica_port)
    on_stream = _stream_ids(new_master)
    accepted = collections.Counter(publisher.accepted)
    assert set(accepted.values()) == {1}
    assert set(on_stream) == set(accepted), (
        f"lost: {len(set(accepted) - set(on_stream))}, not ours: {len(set(on_stream) - set(accepted))}"
    )
    doubled = {envelope_id: count for envelope_id, count in on_stream.items() if count > 1}
    assert not doubled, f"{len(doubled)} of {len(accepted)} accepted events are on the stream more than once"
    assert Event.objects.filter(status=EventStatus.PUBLISHED).count() == len(accepted)
    # Those published while no master answered were held back, and each relay is in the audit log.
    held_back = Event.objects.filter(attempts__gt=0).count()
    assert held_back > 0, "no event was published while the master was down: the test missed the failover"
    assert AuditEntry.objects.filter(action="event.relay").count() == held_back
    assert client.get("/healthz").json()["redis"] is True

    # The bus worker's asyncio client finds the new master too.
    async def worker_stream_length() -> int:
        worker_redis = bus_async_client_new(socket_connect_timeout=1)
        try:
            return int(await worker_redis.xlen(stream_key("tax-policy")))
        finally:
            await worker_redis.aclose()

    assert asyncio.run(worker_stream_length()) == len(accepted)

    # An open page's layer subscription comes back on the new master: a group message reaches it.
    heard = loop.submit(layer.receive(page))
    attempt = 0

    def page_heard() -> bool:
        nonlocal attempt
        attempt += 1
        with contextlib.suppress(redis.ConnectionError):  # the sender's connection to the dead master
            loop.run(layer.group_send("failover", {"type": "bus.events", "n": attempt}))
        with contextlib.suppress(TimeoutError):
            heard.result(timeout=0.2)
        return heard.done()

    try:
        wait_for(page_heard, timeout=30, what="a group message to reach the page after the failover")
        assert heard.result()["n"] >= 1
    finally:
        heard.cancel()
        loop.run(layer.flush())
        loop.close()


def _settings_error(**env: str) -> str:
    """What loading the settings says with these environment variables (empty when it loads)."""
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "hmsadmin.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stderr.strip().splitlines()[-1] if done.returncode else ""


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"REDIS_SENTINELS": "10.0.0.5", "REDIS_SENTINEL_MASTER": "hms"},
            "REDIS_SENTINELS: '10.0.0.5' is not host:port (e.g. 10.0.0.5:26379)",
        ),
        (
            {"REDIS_SENTINELS": "10.0.0.5:26379,10.0.0.6:x", "REDIS_SENTINEL_MASTER": "hms"},
            "REDIS_SENTINELS: '10.0.0.6:x' is not host:port (e.g. 10.0.0.5:26379)",
        ),
        (
            {"REDIS_SENTINELS": "10.0.0.5:26379"},
            "REDIS_SENTINELS is set but REDIS_SENTINEL_MASTER is not: set the service name",
        ),
    ],
)
def test_a_misconfigured_sentinel_setting_stops_the_start_and_says_how_to_fix_it(env, message):
    assert _settings_error(**env) == f"django.core.exceptions.ImproperlyConfigured: {message}"


def test_sentinels_written_with_ipv6_addresses_and_spaces_are_understood():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings as s; "
            "print(s.REDIS_SENTINELS, s.REDIS_SENTINEL_MASTER)",
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "hmsadmin.settings",
            "REDIS_SENTINELS": "[::1]:26379, 10.0.0.5:26380,",
            "REDIS_SENTINEL_MASTER": "hms",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "[('::1', 26379), ('10.0.0.5', 26380)] hms"


def _ensure_redis(tmp_path: Path, sentinels: list[int]) -> subprocess.CompletedProcess[str]:
    """``manage.py ensure_redis`` (what ``make run`` does first) with the bus behind these Sentinels."""
    env = {
        **os.environ,
        "VAR_DIR": str(tmp_path),
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "REDIS_SENTINELS": ",".join(f"127.0.0.1:{port}" for port in sentinels),
        "REDIS_SENTINEL_MASTER": MASTER_NAME,
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "ensure_redis"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_make_run_with_sentinels_checks_their_master_and_starts_no_redis_of_its_own(tmp_path, cluster):
    answered = _ensure_redis(tmp_path, cluster.sentinel_ports)

    assert answered.returncode == 0, answered.stderr
    assert f"Redis answers at the Sentinel master {MASTER_NAME!r}" in answered.stdout
    assert not (tmp_path / "redis").exists()

    unreachable = _ensure_redis(tmp_path, [free_port()])

    assert unreachable.returncode != 0
    assert "is not reachable" in unreachable.stderr
    assert "check REDIS_SENTINELS and REDIS_SENTINEL_MASTER" in unreachable.stderr
    assert not (tmp_path / "redis").exists()
