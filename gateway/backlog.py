"""What the gateway knows of the queue: backlog depth and drain rate, sampled once a
second per process (never per request), and the shedding decision built on them."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway import constants as c
from gateway import metrics
from gateway.connections import is_unavailable
from gateway.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class BacklogState:
    depth: int = 0
    drain_rate: float = 0.0  # rows committed per second, smoothed
    redis_up: bool = False
    sampled_at: float = 0.0


class BacklogMonitor:
    def __init__(self, redis: aioredis.Redis, settings: Settings, interval_s: float = 1.0) -> None:
        self.redis = redis
        self.settings = settings
        self.interval_s = interval_s
        self.state = BacklogState()
        self._last_drained: tuple[float, int] | None = None

    async def sample(self) -> BacklogState:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in self.settings.stream_keys():
                    pipe.xlen(key)
                pipe.get(self.settings.key(c.DRAIN_STATS_KEY))
                replies = await pipe.execute()
        except Exception as exc:  # noqa: BLE001
            if not is_unavailable(exc):
                log.warning("backlog sample failed: %s", type(exc).__name__)
            self.state.redis_up = False
            metrics.DEPENDENCY_UP.labels("redis").set(0)
            return self.state
        now = time.monotonic()
        self.state.depth = sum(int(n) for n in replies[:-1])
        drained = int(replies[-1] or 0)
        if self._last_drained is not None:
            then, before = self._last_drained
            if now > then and drained >= before:
                rate = (drained - before) / (now - then)
                # Smooth: one quiet second must not make Retry-After jump to the maximum.
                self.state.drain_rate = 0.7 * self.state.drain_rate + 0.3 * rate
        self._last_drained = (now, drained)
        self.state.redis_up = True
        self.state.sampled_at = now
        metrics.BACKLOG.set(self.state.depth)
        metrics.DEPENDENCY_UP.labels("redis").set(1)
        return self.state

    async def run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self.interval_s)

    def over_high_water(self) -> bool:
        return self.state.depth >= self.settings.backlog_high_water

    def retry_after(self) -> int:
        """Seconds until the backlog is expected back under the mark, with jitter so
        that shed clients do not all come back in the same second."""
        excess = max(self.state.depth - int(self.settings.backlog_high_water * 0.9), 1)
        rate = self.state.drain_rate
        base = excess / rate if rate > 1 else float(self.settings.retry_after_max_s)
        base = min(max(base, c.DEFAULT_RETRY_AFTER_MIN_S), self.settings.retry_after_max_s)
        return max(1, int(base * random.uniform(0.8, 1.3)))


async def entry_exists(redis: aioredis.Redis, stream: str, entry_id: str, token: str) -> bool:
    reply = await redis.xrange(stream, min=entry_id, max=entry_id, count=1)
    if not reply:
        return False
    _eid, fields = reply[0]
    return bool(fields) and fields.get(c.FIELD_TOKEN.encode()) == token.encode()
