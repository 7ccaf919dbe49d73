"""Where the gateway's Redis is: one URL (a single server or a managed endpoint), or a master found via Sentinel.

django-redis (key cache), channels-redis (control messages) and the gateway's own asyncio client (connection lock)
each take the address in their own shape; this module turns the environment into those shapes, so all three
always follow the same master, also after a Sentinel failover.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured

SENTINELS_VARIABLE = "REDIS_SENTINELS"
MASTER_VARIABLE = "REDIS_SENTINEL_MASTER"
DB_VARIABLE = "REDIS_DB"
PASSWORD_VARIABLE = "REDIS_PASSWORD"
# redis-py refuses commands outright past its default pool of 100 connections, which an admission burst reaches.
CHANNEL_LAYER_MAX_CONNECTIONS = 10_000
SENTINEL_PASSWORD_VARIABLE = "REDIS_SENTINEL_PASSWORD"
SENTINEL_CONNECTION_FACTORY = "django_redis.pool.SentinelConnectionFactory"
SENTINEL_SOCKET_TIMEOUT_SECONDS = 2.0
"""Timeout of the short queries to the sentinels (which master is current); the data connections have their own."""


@dataclass(frozen=True, slots=True)
class RedisSentinel:
    """A Sentinel-monitored master: where the sentinels are, the master's service name, and how to log in."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    password: str | None = None
    sentinel_password: str | None = None

    def sentinel_kwargs(self) -> dict[str, Any]:
        """Connection options for the sentinels themselves (not the master): timeouts and their own password."""
        kwargs: dict[str, Any] = {
            "socket_timeout": SENTINEL_SOCKET_TIMEOUT_SECONDS,
            "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT_SECONDS,
        }
        if self.sentinel_password:
            kwargs["password"] = self.sentinel_password
        return kwargs


def sentinel_from_env(environ: Mapping[str, str]) -> RedisSentinel | None:
    """The Sentinel configuration in *environ*, or None when ``REDIS_SENTINELS`` is unset (``REDIS_URL`` applies)."""
    raw = environ.get(SENTINELS_VARIABLE, "").strip()
    if not raw:
        return None
    sentinels = tuple(_host_port(item.strip()) for item in raw.split(",") if item.strip())
    master = environ.get(MASTER_VARIABLE, "").strip()
    if not master:
        raise ImproperlyConfigured(
            f"{MASTER_VARIABLE} must name the master's service when {SENTINELS_VARIABLE} is set."
        )
    db_raw = environ.get(DB_VARIABLE, "").strip() or "0"
    if not db_raw.isdigit():
        raise ImproperlyConfigured(f"{DB_VARIABLE} must be a database number, got {db_raw!r}.")
    return RedisSentinel(
        sentinels=sentinels,
        master=master,
        db=int(db_raw),
        password=environ.get(PASSWORD_VARIABLE) or None,
        sentinel_password=environ.get(SENTINEL_PASSWORD_VARIABLE) or None,
    )


def _host_port(item: str) -> tuple[str, int]:
    host, separator, port = item.rpartition(":")
    if not separator or not host or not port.isdigit():
        raise ImproperlyConfigured(f"{SENTINELS_VARIABLE} must be a comma-separated list of host:port, got {item!r}.")
    return host.strip("[]"), int(port)


def cache_location(url: str, sentinel: RedisSentinel | None) -> str:
    """django-redis ``LOCATION``: the URL, or ``redis://MASTER/DB`` for its Sentinel connection factory."""
    return url if sentinel is None else f"redis://{sentinel.master}/{sentinel.db}"


def cache_options(sentinel: RedisSentinel | None) -> dict[str, Any]:
    """django-redis ``OPTIONS`` to add for Sentinel (none for a plain URL).

    The default client is kept on purpose: django-redis's ``SentinelClient`` reads from replicas, and a replica
    that lags an invalidation would serve a revoked key's cached entitlement.
    """
    if sentinel is None:
        return {}
    options: dict[str, Any] = {
        "CONNECTION_FACTORY": SENTINEL_CONNECTION_FACTORY,
        "SENTINELS": list(sentinel.sentinels),
        "SENTINEL_KWARGS": sentinel.sentinel_kwargs(),
    }
    if sentinel.password:
        options["PASSWORD"] = sentinel.password
    return options


def channel_layer_host(url: str, sentinel: RedisSentinel | None, socket_timeout: float) -> dict[str, Any]:
    """One channels-redis ``hosts`` entry: an address, or the ``sentinels``/``master_name`` form."""
    if sentinel is None:
        return {"address": url, "socket_timeout": socket_timeout, "max_connections": CHANNEL_LAYER_MAX_CONNECTIONS}
    host: dict[str, Any] = {
        "max_connections": CHANNEL_LAYER_MAX_CONNECTIONS,
        "sentinels": list(sentinel.sentinels),
        "master_name": sentinel.master,
        "sentinel_kwargs": sentinel.sentinel_kwargs(),
        "db": sentinel.db,
        "socket_timeout": socket_timeout,
    }
    if sentinel.password:
        host["password"] = sentinel.password
    return host
