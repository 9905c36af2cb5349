"""Rate limits per client address and per phone, shared by every gateway process.

Counters live in Redis (fixed windows: a client address per minute, a phone per hour),
keyed by an HMAC of the subject, so no address or phone appears in a key name. Off unless
``GATEWAY_RATE_LIMIT_PER_IP`` / ``GATEWAY_RATE_LIMIT_PER_PHONE`` are set.

The gateway's throughput comes from answering many requests with one Redis round trip
(see :mod:`gateway.append`); the limiter keeps that property. Checks are queued and one
flush per loop iteration sends them all in one script call (``lua/rate_window.lua``):
requests of the batch that share a subject are added up locally first. While a flush is
in flight the next batch gathers, as the appender's does. The counters share one hash
tag so that the single call also works on Redis Cluster (they are small and cheap; one
slot holds them well past any national peak).

A subject at its limit is remembered in the process until its window ends: later
requests from it are refused before their body is read, with no round trip at all.

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
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

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
    if ":" not in address:  # IPv4 as aiohttp spells it: the common case, no parsing
        return address
    parsed = _parse_address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed) if parsed is not None else address


@dataclass(frozen=True, slots=True)
class Subject:
    """One counter a request counts against: its scope and its Redis key."""

    scope: str  # CLIENT or PHONE
    key: str


@dataclass(slots=True)
class _Check:
    subjects: tuple[Subject, ...]
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
        # Counter key -> (scope, monotonic time its window ends), for subjects already at
        # their limit. Counts only grow inside a window, so until it ends every further
        # request is refused here: no body read, no validation, no round trip. A flood
        # from one address costs almost nothing.
        self._denied: dict[str, tuple[str, float]] = {}
        self._clients: dict[str, Subject] = {}
        self.round_trips = 0

    @property
    def enabled(self) -> bool:
        return any(limit > 0 for limit, _ in self._limits.values())

    def client_subject(self, remote: str | None, forwarded_for: str | None) -> Subject | None:
        """The counter of the request's client address, or None when that limit is off."""
        if self._limits[CLIENT][0] <= 0:
            return None
        address = counted_subject(client_address(remote, forwarded_for, self.trusted_proxies))
        subject = self._clients.get(address)
        if subject is None:
            # Many requests share an address (carrier NAT, offices): hash each one once.
            if len(self._clients) >= c.RATE_CLIENT_CACHE_MAX:
                self._clients.clear()
            subject = self._subject(CLIENT, self._hasher.client_hash(address))
            self._clients[address] = subject
        return subject

    def phone_subject(self, phone_e164: str) -> Subject | None:
        if self._limits[PHONE][0] <= 0:
            return None
        return self._subject(PHONE, self._hasher.phone_hash(phone_e164))

    def _subject(self, scope: str, subject_hash: str) -> Subject:
        return Subject(scope, self._settings.key(c.RATE_KEY, scope=scope, subject=subject_hash))

    def refuse_known(self, *subjects: Subject | None) -> None:
        """Raise :class:`RateLimited` when this process already knows one of the subjects
        is over its limit for the rest of its window."""
        if not self._denied:
            return
        now = time.monotonic()
        for subject in subjects:
            if subject is None:
                continue
            known = self._denied.get(subject.key)
            if known is None:
                continue
            if known[1] > now:
                raise RateLimited(known[0], self._retry_after((known[1] - now) * 1000))
            del self._denied[subject.key]

    async def check(self, *subjects: Subject | None) -> None:
        """Count one request against each subject; raise :class:`RateLimited` when it is
        over a limit. Checks from the same loop iteration share one Redis round trip."""
        wanted = tuple(s for s in subjects if s is not None)
        if not wanted:
            return
        self.refuse_known(*wanted)
        loop = asyncio.get_running_loop()
        check = _Check(wanted, loop.create_future())
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
        scope_of: dict[str, str] = {}
        for check in batch:
            for subject in check.subjects:
                added[subject.key] = added.get(subject.key, 0) + 1
                scope_of[subject.key] = subject.scope
        try:
            counts = await asyncio.wait_for(
                self._count(added, scope_of), timeout=self._settings.append_timeout_s
            )
        except Exception as exc:  # noqa: BLE001 - every waiter must hear of it
            error = _translate(exc)
            for check in batch:
                if not check.future.done():
                    check.future.set_exception(error)
            return
        self._remember_denied(counts, scope_of)
        # Positions inside the window, in arrival order: the first ``limit`` pass.
        position = {key: total - added[key] for key, (total, _) in counts.items()}
        for check in batch:
            refused: tuple[str, int] | None = None
            for subject in check.subjects:
                position[subject.key] += 1
                if position[subject.key] > self._limits[subject.scope][0]:
                    ends_in_ms = counts[subject.key][1]
                    if refused is None or ends_in_ms > refused[1]:
                        refused = (subject.scope, ends_in_ms)
            if check.future.done():
                continue
            if refused is None:
                check.future.set_result(None)
            else:
                check.future.set_exception(RateLimited(refused[0], self._retry_after(refused[1])))

    async def _count(self, added: dict[str, int], scope_of: dict[str, str]) -> dict[str, tuple[int, int]]:
        keys = list(added)
        argv: list[str] = []
        for key in keys:
            argv += (str(added[key]), str(self._limits[scope_of[key]][1]))

        async def call() -> list[Any]:
            pending = self._redis.evalsha(self._sha, len(keys), *keys, *argv)
            return cast(list[Any], await cast(Awaitable[Any], pending))

        try:
            reply = await call()
        except NoScriptError:
            # Redis restarted or flushed its script cache since we started.
            self._sha = await self._redis.script_load(self._script)
            reply = await call()
        self.round_trips += 1
        return {key: (int(reply[2 * i]), int(reply[2 * i + 1])) for i, key in enumerate(keys)}

    def _remember_denied(self, counts: dict[str, tuple[int, int]], scope_of: dict[str, str]) -> None:
        now = time.monotonic()
        for key, (total, ends_in_ms) in counts.items():
            scope = scope_of[key]
            if total < self._limits[scope][0]:
                continue
            if len(self._denied) >= c.RATE_DENIED_CACHE_MAX:
                self._denied = {k: v for k, v in self._denied.items() if v[1] > now}
                if len(self._denied) >= c.RATE_DENIED_CACHE_MAX:
                    return
            self._denied[key] = (scope, now + ends_in_ms / 1000)

    def _retry_after(self, ends_in_ms: float) -> int:
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
