"""Idempotent append with coalescing: concurrent requests share one Redis round trip.

Each request hands its registration to :meth:`Appender.append` and awaits a future. Per
shard, one flush is in flight at a time; everything that arrives meanwhile rides in the
next flush as a single ``EVALSHA`` of ``lua/append.lua`` that checks every dedupe key and
XADDs the new ones. Under load the batch grows with the arrival rate, so the round trips
per registration fall; when idle a request costs one round trip, no timer delay.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import TimeoutError as RedisTimeout

from gateway import metrics
from gateway import constants as c
from gateway.connections import is_unavailable, unavailable
from gateway.scripts import load_script
from gateway.exceptions import DependencyUnavailable
from gateway.identity import Hasher, new_token, shard_of
from gateway.settings import Settings
from gateway.validation import Registration

log = logging.getLogger(__name__)

APPENDED, REPLAYED, CONFLICT = 0, 1, 2


@dataclass(frozen=True, slots=True)
class AppendResult:
    outcome: int  # APPENDED | REPLAYED | CONFLICT
    registration_id: str  # "" on a conflict seen by someone who is not that person
    received_at: str


@dataclass(slots=True)
class _Pending:
    dedupe_key: str
    args: tuple[str, str, str, str, str, bytes]
    future: asyncio.Future[AppendResult]


class Appender:
    def __init__(self, redis: aioredis.Redis, settings: Settings, hasher: Hasher) -> None:
        self._redis = redis
        self._settings = settings
        self._hasher = hasher
        self._script = redis.register_script(load_script("append.lua"))
        self._queues: dict[int, list[_Pending]] = {}
        self._busy: set[int] = set()
        self._strict_waitaof = False
        self.round_trips = 0
        self.appended = 0

    def use_waitaof(self, enabled: bool) -> None:
        """Strict durability on Redis >= 7.2: confirm each flush reached the AOF on disk."""
        self._strict_waitaof = enabled

    async def append(
        self, registration: Registration, *, idempotency_key: str | None, received_at: str
    ) -> AppendResult:
        identity_key = self._hasher.identity_key(registration.id_type, registration.id_number)
        shard = shard_of(identity_key, self._settings.shards)
        payload = registration.to_payload()
        payload["identity_key"] = identity_key
        args = (
            self._hasher.fingerprint(registration.fingerprint_material()),
            self._hasher.phone_hash(registration.phone),
            self._hasher.idempotency_hash(idempotency_key) if idempotency_key else "",
            new_token(),
            received_at,
            orjson.dumps(payload),
        )
        loop = asyncio.get_running_loop()
        pending = _Pending(
            self._settings.key(c.DEDUPE_KEY, shard=shard, identity_key=identity_key),
            args,
            loop.create_future(),
        )
        self._queues.setdefault(shard, []).append(pending)
        if shard not in self._busy:
            self._busy.add(shard)
            # call_soon: let every request parsed in this loop iteration join the batch.
            loop.call_soon(self._start_flush, shard)
        return await pending.future

    def _start_flush(self, shard: int) -> None:
        task = asyncio.get_running_loop().create_task(self._flush_loop(shard))
        task.add_done_callback(_log_crash)

    async def _flush_loop(self, shard: int) -> None:
        try:
            while self._queues.get(shard):
                batch = self._queues[shard][: self._settings.append_max_batch]
                del self._queues[shard][: len(batch)]
                await self._flush(shard, batch)
        finally:
            self._busy.discard(shard)
            if self._queues.get(shard):  # arrived after the loop test, before discard
                self._busy.add(shard)
                asyncio.get_running_loop().call_soon(self._start_flush, shard)

    async def _flush(self, shard: int, batch: list[_Pending]) -> None:
        keys = [self._settings.stream_key(shard)] + [p.dedupe_key for p in batch]
        argv: list[Any] = [self._settings.dedupe_ttl_s, shard]
        for p in batch:
            argv.extend(p.args)
        try:
            raw = await asyncio.wait_for(
                self._call(keys, argv), timeout=self._settings.append_timeout_s
            )
        except Exception as exc:  # noqa: BLE001 - every waiter must hear of it
            error: BaseException = exc
            if isinstance(exc, DependencyUnavailable):
                pass
            elif is_unavailable(exc):
                error = unavailable(exc)
            else:
                log.error("append failed: %s", type(exc).__name__)
                error = DependencyUnavailable("redis", type(exc).__name__)
            if isinstance(exc, (TimeoutError, RedisTimeout)):
                # Redis hangs: whatever queued behind this call would wait one more full
                # timeout each. Nothing of theirs was sent, so answer them 503 now.
                batch = batch + self._queues.get(shard, [])
                self._queues[shard] = []
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(error)
            return
        self.round_trips += 1 + int(self._strict_waitaof)
        metrics.APPEND_BATCH.observe(len(batch))
        for p, (outcome, rid, at) in zip(batch, raw, strict=True):
            if outcome == APPENDED:
                self.appended += 1
            if not p.future.done():
                p.future.set_result(AppendResult(int(outcome), _text(rid), _text(at)))

    async def _call(self, keys: list[str], argv: list[Any]) -> Any:
        result = await self._script(keys=keys, args=argv)
        if self._strict_waitaof:
            local, _replicas = await self._redis.execute_command(
                "WAITAOF", 1, 0, int(self._settings.append_timeout_s * 1000)
            )
            if int(local) < 1:
                raise DependencyUnavailable("redis", "WAITAOF")
        return result


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("append flush crashed", exc_info=task.exception())
