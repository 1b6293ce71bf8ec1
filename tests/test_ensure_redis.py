"""``make stop`` (``manage.py ensure_redis --stop``) stops the Redis ``make run`` started, and never another."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import redis
from django.core.management import CommandError, call_command
from django.test import override_settings

from tests.support import ROOT, RedisServer, free_port


class Ran(NamedTuple):
    """How ``ensure_redis`` ended: 0, or 1 with its error on stderr (as ``manage.py`` exits)."""

    returncode: int
    stdout: str
    stderr: str


def _ensure_redis(url: str, var_dir: Path, *extra: str) -> Ran:
    """``ensure_redis`` in this process (measured by coverage), with REDIS_URL and VAR_DIR set as given."""
    out, err = io.StringIO(), io.StringIO()
    with override_settings(REDIS_URL=url, VAR_DIR=var_dir, REDIS_SENTINELS=[]):
        try:
            call_command("ensure_redis", *extra, stdout=out, stderr=err)
        except CommandError as error:
            return Ran(1, out.getvalue(), f"{err.getvalue()}CommandError: {error}\n")
    return Ran(0, out.getvalue(), err.getvalue())


def _ensure_redis_process(url: str, var_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``manage.py ensure_redis`` as ``make run`` and ``make stop`` run it."""
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "ensure_redis", *extra],
        env={**os.environ, "REDIS_URL": url, "VAR_DIR": str(var_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.fixture
def other_redis():
    """A Redis that ensure_redis did not start (as the machine's own Redis on 6379 was)."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def test_stop_with_another_redis_url_stops_the_one_it_started_and_leaves_the_other_running(tmp_path, other_redis):
    started_url = f"redis://127.0.0.1:{free_port()}/0"
    started = _ensure_redis(started_url, tmp_path)
    assert started.returncode == 0, started.stderr
    pid = int((tmp_path / "redis" / "redis.pid").read_text())

    stopped = _ensure_redis(other_redis.url(0), tmp_path, "--stop")

    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped the Redis started under var/redis (pid {pid}, {started_url})" in stopped.stdout
    assert not _answers(started_url)
    assert other_redis.answers()
    assert other_redis.process is not None
    assert other_redis.process.poll() is None


def test_stop_refuses_when_the_redis_at_redis_url_is_not_the_process_in_the_pid_file(tmp_path, other_redis):
    # A pid file naming a live process that is not the Redis at REDIS_URL (here: this test's own process).
    (tmp_path / "redis").mkdir()
    (tmp_path / "redis" / "redis.pid").write_text(f"{os.getpid()}\n")

    stopped = _ensure_redis_process(other_redis.url(0), tmp_path, "--stop")  # what `make stop` runs

    assert stopped.returncode != 0
    assert f"is process {other_redis.process.pid}, not the one started under var/redis" in stopped.stderr
    assert "left running, nothing stopped" in stopped.stderr
    assert other_redis.answers()


def test_stop_with_a_stale_pid_file_says_nothing_runs_and_stops_nothing(tmp_path, other_redis):
    finished = subprocess.Popen(["true"])
    finished.wait()
    (tmp_path / "redis").mkdir()
    pidfile = tmp_path / "redis" / "redis.pid"
    pidfile.write_text(f"{finished.pid}\n")

    stopped = _ensure_redis(other_redis.url(0), tmp_path, "--stop")

    assert stopped.returncode == 0, stopped.stderr
    assert f"(pid {finished.pid}) is not running: nothing to stop" in stopped.stdout
    assert not pidfile.exists()
    assert other_redis.answers()


def test_stop_without_a_pid_file_says_none_was_started(tmp_path, other_redis):
    stopped = _ensure_redis(other_redis.url(0), tmp_path, "--stop")

    assert stopped.returncode == 0
    assert stopped.stdout.strip() == "no Redis was started under var/redis"
    assert other_redis.answers()
