"""The consumer-group side of the intake streams, for the writer.

Life cycle: create the group with MKSTREAM (only BUSYGROUP is ignored), XREADGROUP new
entries in batches, XACK + XDEL only after the PostgreSQL commit, XAUTOCLAIM entries that
a dead consumer left pending. Never trimmed by MAXLEN: an entry leaves the stream when
its row is committed, so the stream length *is* the backlog.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.commands.core import AsyncScript

from gateway import constants as c
from gateway import metrics
from gateway.connections import is_unavailable, unavailable
from gateway.scripts import load_script
from gateway.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Entry:
    stream: str
    shard: int
    entry_id: str
    fields: dict[bytes, bytes] | None  # None: the entry was deleted while pending
    deliveries: int = 1


class Streams:
    def __init__(self, redis: aioredis.Redis, settings: Settings, consumer: str) -> None:
        self.redis = redis
        self.settings = settings
        self.consumer = consumer
        self._shard_of = {settings.stream_key(s): s for s in range(settings.shards)}
        self._claim_cursor = {key: "0-0" for key in self._shard_of}
        self._release: AsyncScript | None = None

    async def ensure_groups(self) -> None:
        for key in self._shard_of:
            await self.ensure_group(key)

    async def ensure_group(self, key: str) -> bool:
        """Create the group (and the stream). True when it had to be created."""
        try:
            await self.redis.xgroup_create(key, c.CONSUMER_GROUP, id="0", mkstream=True)
            return True
        except rexc.ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise

    async def read_new(self, count: int, block_ms: int) -> list[Entry]:
        streams = {key: ">" for key in self._shard_of}
        try:
            reply = await self.redis.xreadgroup(
                c.CONSUMER_GROUP, self.consumer, streams, count=count, block=block_ms
            )
        except rexc.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Stream deleted or group destroyed (FLUSHALL, an operator's mistake): recreate
            # it, raise the alarm metric, and let the loop read again.
            log.error("consumer group missing; recreating")
            metrics.WRITER_GROUP_RECREATED.inc()
            await self.ensure_groups()
            return []
        return self._entries(reply)

    def _entries(self, reply: object) -> list[Entry]:
        entries: list[Entry] = []
        if not reply:
            return entries
        items = reply.items() if isinstance(reply, dict) else reply  # RESP3 vs RESP2
        for stream, messages in items:  # type: ignore[union-attr]
            key = stream.decode() if isinstance(stream, bytes) else stream
            if isinstance(messages, list) and messages and isinstance(messages[0], list):
                messages = messages[0]
            for entry_id, fields in messages:
                entries.append(
                    Entry(key, self._shard_of[key], _text(entry_id), fields or None)
                )
        return entries

    async def claim_stale(self, count: int) -> list[Entry]:
        """XAUTOCLAIM entries idle longer than the claim threshold, all shards.

        Follows each shard's cursor to the end over successive calls; entries deleted
        while pending come back as ``fields=None`` so the caller acknowledges them.
        """
        claimed: list[Entry] = []
        for key, shard in self._shard_of.items():
            try:
                reply = await self.redis.xautoclaim(
                    key,
                    c.CONSUMER_GROUP,
                    self.consumer,
                    min_idle_time=self.settings.claim_idle_ms,
                    start_id=self._claim_cursor[key],
                    count=count,
                )
            except rexc.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    metrics.WRITER_GROUP_RECREATED.inc()
                    await self.ensure_group(key)
                    continue
                raise
            cursor, messages = reply[0], reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            self._claim_cursor[key] = _text(cursor)
            if not messages and not deleted:
                continue
            live = [(eid, fields) for eid, fields in messages if fields]
            deliveries = await self._deliveries(key, [_text(eid) for eid, _ in live])
            for eid, fields in messages:
                entry_id = _text(eid)
                if fields:
                    claimed.append(Entry(key, shard, entry_id, fields, deliveries.get(entry_id, 1)))
                else:
                    claimed.append(Entry(key, shard, entry_id, None))
            for eid in deleted:
                claimed.append(Entry(key, shard, _text(eid), None))
            metrics.WRITER_RECLAIMED.inc(len(live))
        return claimed

    async def _deliveries(self, key: str, ids: Sequence[str]) -> dict[str, int]:
        if not ids:
            return {}
        rows = await self.redis.xpending_range(
            key, c.CONSUMER_GROUP, min=min(ids, key=_id_tuple), max=max(ids, key=_id_tuple),
            count=len(ids) * 2 + 10, consumername=self.consumer,
        )
        return {_text(r["message_id"]): int(r["times_delivered"]) for r in rows}

    async def ack_and_delete(self, entries: Sequence[Entry]) -> None:
        by_stream: dict[str, list[str]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry.entry_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            for key, ids in by_stream.items():
                pipe.xack(key, c.CONSUMER_GROUP, *ids)
                pipe.xdel(key, *ids)
            await pipe.execute()

    async def release_identities(self, held: Sequence[tuple[int, str, str]]) -> None:
        """Delete the dedupe keys of dead-lettered registrations (shard, identity key,
        registration id), each only if it still names that registration."""
        if not held:
            return
        if self._release is None:
            self._release = self.redis.register_script(load_script("release.lua"))
        for shard, identity_key, rid in held:
            key = self.settings.key(c.DEDUPE_KEY, shard=shard, identity_key=identity_key)
            await self._release(keys=[key], args=[rid])

    async def heartbeat(self, committed: int) -> None:
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.settings.key(c.WRITER_HEARTBEAT_KEY), {self.consumer: now})
            pipe.zremrangebyscore(
                self.settings.key(c.WRITER_HEARTBEAT_KEY), 0, now - 24 * 3600
            )
            if committed:
                pipe.incrby(self.settings.key(c.DRAIN_STATS_KEY), committed)
            await pipe.execute()

    async def forget_consumer(self) -> None:
        """On a clean stop: leave the group only if nothing is pending for us."""
        for key in self._shard_of:
            try:
                info = await self.redis.xpending(key, c.CONSUMER_GROUP)
                mine = {
                    _text(row["name"]): int(row["pending"]) for row in info.get("consumers", [])
                }
                if mine.get(self.consumer, 0) == 0:
                    await self.redis.xgroup_delconsumer(key, c.CONSUMER_GROUP, self.consumer)
            except rexc.RedisError:
                return
        await self.redis.zrem(self.settings.key(c.WRITER_HEARTBEAT_KEY), self.consumer)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


__all__ = ["Entry", "Streams", "is_unavailable", "unavailable"]
