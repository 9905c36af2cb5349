"""Redis connection factory and the start-up safety check.

The only modules that import ``redis`` are this one, ``append.py`` and ``stream.py``;
they translate driver errors into :class:`gateway.exceptions.DependencyUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis import exceptions as rexc

from gateway.exceptions import ConfigurationError, DependencyUnavailable
from gateway.settings import Settings

log = logging.getLogger(__name__)

# Errors that mean "Redis cannot take this now" rather than "this request is wrong".
REDIS_UNAVAILABLE: tuple[type[BaseException], ...] = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.BusyLoadingError,
    rexc.ReadOnlyError,
    rexc.OutOfMemoryError,
    rexc.ClusterDownError if hasattr(rexc, "ClusterDownError") else rexc.ConnectionError,
    OSError,
    asyncio.TimeoutError,
)
RedisError = rexc.RedisError
ResponseError = rexc.ResponseError


def unavailable(exc: BaseException) -> DependencyUnavailable:
    """Translate a driver error into the package's own exception (no payload in text)."""
    reason = type(exc).__name__
    text = str(exc)
    if text.startswith(("OOM", "MISCONF", "LOADING", "READONLY", "NOGROUP", "BUSY")):
        reason = text.split(" ", 1)[0]
    return DependencyUnavailable("redis", reason)


def is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, REDIS_UNAVAILABLE):
        return True
    # A write refused for memory or persistence comes back as a plain ResponseError.
    return isinstance(exc, rexc.ResponseError) and str(exc).startswith(
        ("OOM", "MISCONF", "LOADING", "READONLY", "BUSY", "NOREPLICAS", "CLUSTERDOWN", "TRYAGAIN")
    )


def client(settings: Settings, *, timeout_s: float | None = None) -> aioredis.Redis:
    timeout = timeout_s if timeout_s is not None else max(settings.append_timeout_s, 1.0)
    return aioredis.Redis.from_url(
        settings.redis_url,
        decode_responses=False,
        socket_connect_timeout=min(timeout, 3.0),
        socket_timeout=timeout,
        socket_keepalive=True,
        health_check_interval=15,
        client_name="intake-gateway",
    )


async def connect(
    settings: Settings, *, attempts: int = 30, delay_s: float = 0.5, timeout_s: float | None = None
) -> aioredis.Redis:
    """Connect, retrying while Redis starts; log the server version once."""
    last: BaseException | None = None
    for attempt in range(1, attempts + 1):
        conn = client(settings, timeout_s=timeout_s)
        try:
            info = await conn.info("server")
            log.info(
                "redis connected",
                extra={"redis_version": info.get("redis_version"), "attempt": attempt},
            )
            return conn
        except REDIS_UNAVAILABLE as exc:
            last = exc
            await conn.aclose()
            if attempt < attempts:
                await asyncio.sleep(delay_s)
    assert last is not None
    raise unavailable(last)


@dataclass(frozen=True)
class RedisSafety:
    version: tuple[int, ...]
    appendonly: bool
    appendfsync: str
    maxmemory_policy: str

    @property
    def supports_waitaof(self) -> bool:
        return self.version >= (7, 2)

    @property
    def confirms_disk_writes(self) -> bool:
        """Can a write be known to be on disk before the 202 (strict durability)?"""
        return self.appendonly and (self.supports_waitaof or self.appendfsync == "always")

    def problems(self, settings: Settings) -> list[str]:
        found = []
        if not self.appendonly:
            found.append(
                "appendonly is off: a Redis restart loses every queued registration "
                "(set appendonly yes, appendfsync everysec)"
            )
        if self.maxmemory_policy != "noeviction":
            found.append(
                f"maxmemory-policy is {self.maxmemory_policy}: Redis may evict queued "
                "registrations or dedupe keys (set maxmemory-policy noeviction)"
            )
        if settings.durability == "strict" and not self.supports_waitaof:
            if self.appendfsync != "always":
                found.append(
                    "strict durability needs WAITAOF (Redis >= 7.2) or appendfsync always"
                )
        return found


async def inspect_safety(conn: aioredis.Redis) -> RedisSafety:
    info = await conn.info("server")
    version = tuple(int(p) for p in str(info.get("redis_version", "0")).split(".")[:3] if p.isdigit())
    try:
        cfg = await conn.config_get("appendonly")
        cfg.update(await conn.config_get("appendfsync"))
        cfg.update(await conn.config_get("maxmemory-policy"))
    except rexc.ResponseError as exc:  # CONFIG renamed/disabled on managed services
        raise ConfigurationError(f"cannot read Redis configuration: {exc}") from exc

    def get(name: str) -> str:
        value = cfg.get(name.encode(), cfg.get(name, b""))  # type: ignore[call-overload]
        return value.decode() if isinstance(value, bytes) else str(value)

    return RedisSafety(
        version=version,
        appendonly=get("appendonly") == "yes",
        appendfsync=get("appendfsync"),
        maxmemory_policy=get("maxmemory-policy"),
    )


async def check_safety(conn: aioredis.Redis, settings: Settings) -> RedisSafety:
    """Refuse an unsafe Redis in production mode; warn in development."""
    try:
        safety = await inspect_safety(conn)
    except ConfigurationError:
        if settings.production:
            raise
        log.warning("redis configuration unreadable; persistence not checked")
        return RedisSafety((0,), False, "", "unknown")
    problems = safety.problems(settings)
    for problem in problems:
        log.warning("unsafe redis: %s", problem)
    if problems and settings.production:
        raise ConfigurationError("refusing to start in production mode: " + "; ".join(problems))
    if settings.durability == "strict" and not safety.confirms_disk_writes:
        # Strict is a promise made to every caller; never degrade it silently, even in
        # development mode.
        raise ConfigurationError(
            "refusing to start: GATEWAY_DURABILITY=strict needs appendonly yes and either "
            "Redis >= 7.2 (WAITAOF) or appendfsync always"
        )
    return safety
