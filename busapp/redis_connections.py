"""Every Redis client of the bus, built from settings: ``REDIS_URL``, or the master the Sentinels name.

With ``REDIS_SENTINELS`` and ``REDIS_SENTINEL_MASTER`` set, a client asks the Sentinels for the
master's address whenever it connects (redis-py's ``SentinelConnectionPool``), so after a failover
its next connection reaches the new master; ``REDIS_URL`` then gives only the database number,
the credentials and TLS (``rediss://``). The Channels layer is configured in settings
(channels-redis builds its own Sentinel pool from ``CHANNEL_LAYERS``).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import NoBackoff
from redis.connection import SSLConnection, parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection, SentinelManagedSSLConnection


def sentinel_options(retry_class: type[Retry] | type[AsyncRetry] = Retry) -> dict[str, Any]:
    """How clients talk to each Sentinel: a dead or stalled one costs at most a second, then the next is asked.

    redis-py's own default retries each Sentinel three times with backoff: four seconds for one that is down.
    """
    return {"socket_connect_timeout": 1, "socket_timeout": 1, "retry": retry_class(NoBackoff(), 0)}


def bus_address() -> str:
    """Where the bus is, as configured: its URL, or the Sentinels' master name, addresses and database."""
    if not settings.REDIS_SENTINELS:
        return str(settings.REDIS_URL)
    sentinels = ",".join(f"{host}:{port}" for host, port in settings.REDIS_SENTINELS)
    database = _master_options().get("db", 0)
    return f"the Sentinel master {settings.REDIS_SENTINEL_MASTER!r} ({sentinels}) database {database}"


def _master_options() -> dict[str, Any]:
    """What ``REDIS_URL`` says besides its host and port: database, user name, password, TLS."""
    parsed = parse_url(settings.REDIS_URL)
    options = {key: parsed[key] for key in ("db", "username", "password") if key in parsed}
    if settings.REDIS_URL.startswith("rediss://"):
        options["ssl"] = True  # the Sentinel pool then makes SentinelManagedSSLConnections
    return options


def bus_client_new(**options: Any) -> redis.Redis:
    """A new client on the bus's Redis; ``options`` are redis-py connection options (timeouts)."""
    if not settings.REDIS_SENTINELS:
        return redis.Redis.from_url(settings.REDIS_URL, **options)
    sentinel = Sentinel(settings.REDIS_SENTINELS, sentinel_kwargs=sentinel_options())
    client: redis.Redis = sentinel.master_for(settings.REDIS_SENTINEL_MASTER, **{**_master_options(), **options})
    return client


def bus_async_client_new(**options: Any) -> aioredis.Redis:
    """A new asyncio client on the bus's Redis (the bus worker's); ``options`` as for ``bus_client_new``."""
    if not settings.REDIS_SENTINELS:
        return aioredis.Redis.from_url(settings.REDIS_URL, **options)
    sentinel = AsyncSentinel(settings.REDIS_SENTINELS, sentinel_kwargs=sentinel_options(AsyncRetry))
    client: aioredis.Redis = sentinel.master_for(settings.REDIS_SENTINEL_MASTER, **{**_master_options(), **options})
    return client


class SendingSentinelConnection(SentinelManagedConnection):
    """A Sentinel-managed connection that asks the Sentinels for the master however it comes to connect.

    redis-py's ``send_packed_command`` connects an unconnected connection itself, past the
    ``connect()`` that asks the Sentinels: a pool always connects first, but a connection used on
    its own went to redis-py's default address (localhost:6379) or back to the dead master's.
    """

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """Connect through the Sentinels first when not connected, then send."""
        if not self.is_connected:
            self.connect()  # type: ignore[no-untyped-call]  # redis-py's, unannotated
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]  # the same


class SendingSentinelSSLConnection(SendingSentinelConnection, SSLConnection):
    """``SendingSentinelConnection`` over TLS (``rediss://``)."""


def pool_connection_new(pool: redis.ConnectionPool) -> redis.Connection:
    """A new connection, not yet connected, made as ``pool`` makes its own, for use outside the pool.

    From a Sentinel pool it asks the Sentinels for the master each time it connects, so after a
    failover its next connection reaches the new master.
    """
    connection_class = pool.connection_class
    if issubclass(connection_class, SentinelManagedSSLConnection):
        connection_class = SendingSentinelSSLConnection
    elif issubclass(connection_class, SentinelManagedConnection):
        connection_class = SendingSentinelConnection
    made: redis.Connection = connection_class(**pool.connection_kwargs)
    return made
