"""Rate limits per client address and per phone, shared by every gateway process.

Counters live in Redis (fixed windows: a client address per minute, a phone per hour),
keyed by an HMAC of the subject, so no address or phone appears in a key name. Off unless
``GATEWAY_RATE_LIMIT_PER_IP`` / ``GATEWAY_RATE_LIMIT_PER_PHONE`` are set.

The gateway's throughput comes from answering many requests with one Redis round trip
(see :mod:`gateway.append`); the limiter keeps that property. Checks are queued and one
flush per loop iteration sends them all as a single pipeline: requests of the batch that
share a subject are added up locally and cost one counter update. While a flush is in
flight the next batch gathers, as the appender's does.

What counts: every ``POST /v1/registrations`` counts against its client address, whatever
its outcome; a request that passes validation also counts against its phone (E.164, so
every spelling of one number is one counter). A request refused by one limit still counts
against the other. Replays of the same registration count too: a phone's limit should sit
well above what a family registering its members needs (think 20 an hour, not 3).

Client address: the connection's peer, unless that peer is a trusted proxy
(``GATEWAY_TRUSTED_PROXIES``, addresses or CIDRs). Then ``X-Forwarded-For`` is read from
the right, skipping trusted proxies, and the first untrusted hop is the client: the left
end of the header is whatever the client chose to send, so it cannot name the subject.
IPv6 clients are counted per /64, the smallest block one subscriber is given.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from gateway import constants as c
from gateway.connections import is_unavailable, unavailable
from gateway.exceptions import ConfigurationError, DependencyUnavailable, GatewayError
from gateway.identity import Hasher
from gateway.scripts import load_script
from gateway.settings import Settings

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger(__name__)

CLIENT = "client"
PHONE = "phone"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RateLimited(GatewayError):
    """Over a limit: answer 429 with ``Retry-After``. ``scope`` is ``client`` or ``phone``."""

    def __init__(self, scope: str, retry_after_s: int) -> None:
        super().__init__(f"rate limited ({scope}), retry after {retry_after_s}s")
        self.scope = scope
        self.retry_after_s = retry_after_s


def parse_networks(text: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 127.0.0.1"`` -> networks; a bad entry is a configuration error."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ConfigurationError(
                f"GATEWAY_TRUSTED_PROXIES: {item!r} is not an address or CIDR"
            ) from exc
    return tuple(networks)


def _parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("["):  # "[2001:db8::1]:443"
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:  # "203.0.113.9:51234"
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    parsed = _parse_address(address)
    return parsed is not None and any(parsed in net for net in trusted)


def client_address(
    remote: str | None, forwarded_for: str | None, trusted: Sequence[Network]
) -> str:
    """The address a request is counted against (see the module docstring)."""
    address = remote or ""
    if not trusted or not forwarded_for or not _trusted(address, trusted):
        return address
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else address


def counted_subject(address: str) -> str:
    """IPv6 addresses count per /64; IPv4 per address; anything else as it is."""
    parsed = _parse_address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed) if parsed is not None else address


@dataclass(slots=True)
class _Check:
    subjects: tuple[tuple[str, str], ...]  # (scope, counter key)
    future: asyncio.Future[None]


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, settings: Settings, hasher: Hasher) -> None:
        self._redis = redis
        self._settings = settings
        self._hasher = hasher
        self._limits = {
            CLIENT: (settings.rate_limit_per_ip, c.RATE_WINDOW_CLIENT_S * 1000),
            PHONE: (settings.rate_limit_per_phone, c.RATE_WINDOW_PHONE_S * 1000),
        }
        self.trusted_proxies = parse_networks(settings.trusted_proxies)
        self._script = load_script("rate_window.lua")
        self._sha = redis.register_script(self._script).sha
        self._queue: list[_Check] = []
        self._busy = False
        self.round_trips = 0

    @property
    def enabled(self) -> bool:
        return any(limit > 0 for limit, _ in self._limits.values())

    def client_of(self, remote: str | None, forwarded_for: str | None) -> str:
        return client_address(remote, forwarded_for, self.trusted_proxies)

    async def check(self, client: str | None, phone_e164: str | None) -> None:
        """Count one request; raise :class:`RateLimited` when it is over a limit."""
        subjects: list[tuple[str, str]] = []
        if client is not None and self._limits[CLIENT][0] > 0:
            subject = self._hasher.client_hash(counted_subject(client))
            subjects.append((CLIENT, self._settings.key(c.RATE_KEY, scope=CLIENT, subject=subject)))
        if phone_e164 is not None and self._limits[PHONE][0] > 0:
            subject = self._hasher.phone_hash(phone_e164)
            subjects.append((PHONE, self._settings.key(c.RATE_KEY, scope=PHONE, subject=subject)))
        if not subjects:
            return
        loop = asyncio.get_running_loop()
        check = _Check(tuple(subjects), loop.create_future())
        self._queue.append(check)
        if not self._busy:
            self._busy = True
            # call_soon: every request that reaches this point in this loop iteration
            # joins the same round trip.
            loop.call_soon(self._start_flush)
        await check.future

    def _start_flush(self) -> None:
        task = asyncio.get_running_loop().create_task(self._flush_loop())
        task.add_done_callback(_log_crash)

    async def _flush_loop(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._flush(batch)
        finally:
            self._busy = False
            if self._queue:
                self._busy = True
                asyncio.get_running_loop().call_soon(self._start_flush)

    async def _flush(self, batch: list[_Check]) -> None:
        added: dict[str, int] = {}
        window_ms: dict[str, int] = {}
        for check in batch:
            for scope, key in check.subjects:
                added[key] = added.get(key, 0) + 1
                window_ms[key] = self._limits[scope][1]
        try:
            counts = await asyncio.wait_for(
                self._count(added, window_ms), timeout=self._settings.append_timeout_s
            )
        except Exception as exc:  # noqa: BLE001 - every waiter must hear of it
            error = _translate(exc)
            for check in batch:
                if not check.future.done():
                    check.future.set_exception(error)
            return
        # Positions inside the window, in arrival order: the first ``limit`` pass.
        position = {key: total - added[key] for key, (total, _) in counts.items()}
        for check in batch:
            refused: tuple[str, int] | None = None
            for scope, key in check.subjects:
                position[key] += 1
                if position[key] > self._limits[scope][0]:
                    ends_in_ms = counts[key][1]
                    if refused is None or ends_in_ms > refused[1]:
                        refused = (scope, ends_in_ms)
            if check.future.done():
                continue
            if refused is None:
                check.future.set_result(None)
            else:
                check.future.set_exception(RateLimited(refused[0], self._retry_after(refused[1])))

    async def _count(self, added: dict[str, int], window_ms: dict[str, int]) -> dict[str, tuple[int, int]]:
        for attempt in (1, 2):
            pipe = self._redis.pipeline(transaction=False)
            for key, n in added.items():
                pipe.evalsha(self._sha, 1, key, n, window_ms[key])
            try:
                replies: list[Any] = await pipe.execute()
            except Exception as exc:
                if attempt == 1 and isinstance(exc, NoScriptError):
                    # Redis restarted or flushed its script cache since we started.
                    self._sha = await self._redis.script_load(self._script)
                    continue
                raise
            finally:
                await pipe.reset()
            self.round_trips += 1
            return {
                key: (int(count), int(ttl)) for key, (count, ttl) in zip(added, replies, strict=True)
            }
        raise AssertionError("unreachable")

    def _retry_after(self, ends_in_ms: int) -> int:
        seconds = max(1, math.ceil(ends_in_ms / 1000))
        return seconds + random.randint(0, c.RATE_RETRY_JITTER_S)


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, DependencyUnavailable):
        return exc
    if is_unavailable(exc):
        return unavailable(exc)
    log.error("rate-limit check failed: %s", type(exc).__name__)
    return DependencyUnavailable("redis", type(exc).__name__)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("rate-limit flush crashed", exc_info=task.exception())
