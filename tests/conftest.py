"""Every test runs against real services: a redis-server the suite starts, and the configured database."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.core.management import call_command

from busapp.validation import validator_cache_clear
from tests.support import OutputWatcher, RedisServer, publish_deduction, seed_script, wait_for

DEMO_PASSWORD = "correct-horse-battery-42"
_suite_redis = RedisServer()


def pytest_configure(config: pytest.Config) -> None:
    """Start the suite's own Redis, point the bus and the Channels layer at it, hash passwords cheaply."""
    _suite_redis.start()
    # Tests sign the demo people in thousands of times; production's slow hash would cost minutes of CI.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.REDIS_URL = _suite_redis.url(0)
    settings.CHANNEL_LAYER_URL = _suite_redis.url(1)
    settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]["address"] = _suite_redis.url(1)  # type: ignore[index]


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the suite's Redis."""
    _suite_redis.stop()


@pytest.fixture(autouse=True)
def _fresh_validators() -> Iterator[None]:
    """Compiled validators are per process; forget them so each test compiles its own."""
    validator_cache_clear()
    yield
    validator_cache_clear()


@pytest.fixture
def suite_redis() -> RedisServer:
    """The suite's Redis server."""
    return _suite_redis


@pytest.fixture
def bus(suite_redis: RedisServer) -> redis.Redis:
    """A client on the bus's Redis, emptied (bus and Channels layer) before the test."""
    client = redis.Redis.from_url(suite_redis.url(0))
    client.flushall()
    return client


@pytest.fixture
def demo(db: None) -> None:
    """The seed's story: topics tax-policy and irs.withholding, their schemas, and the four demo users."""
    call_command("load_demo", password=DEMO_PASSWORD, stdout=io.StringIO())


@pytest.fixture
def demo_committed(transactional_db: None) -> None:
    """The demo data, committed, for tests where other threads or processes read the database."""
    call_command("load_demo", password=DEMO_PASSWORD, stdout=io.StringIO())


@pytest.fixture
def outage_redis(settings: object) -> Iterator[RedisServer]:
    """A Redis of its own that the test may stop and start, set as the bus."""
    server = RedisServer()
    server.start()
    settings.REDIS_URL = server.url(0)  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def refund_service(bus: redis.Redis, suite_redis: RedisServer) -> Iterator[OutputWatcher]:
    """The seed chapter's refund_service.py, unchanged, subscribed to tax-policy."""
    watcher = OutputWatcher(seed_script("refund_service.py", suite_redis.port))
    wait_for(lambda: bus.pubsub_numsub("tax-policy")[0][1] == 1, timeout=10, what="refund_service to subscribe")
    yield watcher
    watcher.stop()


@pytest.fixture
async def sync_thread_connection_closed() -> AsyncIterator[None]:
    """The bus worker's database work runs in Django's sync thread: its connection is closed after the test."""
    from asgiref.sync import sync_to_async
    from django.db import connections

    yield
    await sync_to_async(connections.close_all, thread_sensitive=True)()


@pytest.fixture
def publish_on_bus(bus: redis.Redis, django_capture_on_commit_callbacks: Any) -> Callable[[int], Any]:
    """Publish the seed's event with a deduction and have it on the bus (its commit hook sends it): the event."""

    def published(deduction: int) -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            event = publish_deduction(deduction)
        event.refresh_from_db()
        assert event.published_at is not None
        return event

    return published
