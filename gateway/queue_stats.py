"""What operators ask first: how deep is the queue, is it draining, and how old is the
oldest registration not yet in the database.

Everything here is read from Redis in one pipelined round trip per snapshot:

- backlog: entries still in each intake stream. Entries leave a stream only after their
  rows are committed, so the stream length *is* the number not yet in PostgreSQL;
- pending: delivered to a writer, not yet committed; lag: not yet delivered to any;
- oldest age: Redis's clock minus the millisecond timestamp of the first entry id still
  in the stream (ids are ``<ms>-<seq>``);
- writers alive: heartbeats in ``writers:alive`` newer than the heartbeat TTL;
- drained: rows committed by all writers, the ``writers:drained`` counter.

Rates need two points in time. Gateway processes record one snapshot a second in the
``ops:history`` stream (the first process to write a given second wins, so N processes
still make one point a second); the live page and ``gateway status`` read it back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rexc

from gateway import constants as c
from gateway.connections import unavailable
from gateway.settings import Settings

log = logging.getLogger(__name__)

RATE_WINDOW_S = 5.0  # writers report committed rows every ~2 s: smooth over a few reports


@dataclass(frozen=True, slots=True)
class ShardStats:
    shard: int
    backlog: int
    pending: int
    lag: int
    oldest_age_s: float
    entries_added: int


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    taken_at: float  # Redis server time, seconds since the epoch
    shards: tuple[ShardStats, ...]
    drained_total: int
    writers_alive: int

    @property
    def backlog(self) -> int:
        return sum(s.backlog for s in self.shards)

    @property
    def pending(self) -> int:
        return sum(s.pending for s in self.shards)

    @property
    def lag(self) -> int:
        return sum(s.lag for s in self.shards)

    @property
    def oldest_age_s(self) -> float:
        return max((s.oldest_age_s for s in self.shards), default=0.0)

    @property
    def entries_added(self) -> int:
        return sum(s.entries_added for s in self.shards)

    def point(self) -> Point:
        return Point(
            t=self.taken_at,
            backlog=self.backlog,
            pending=self.pending,
            lag=self.lag,
            oldest_age_s=self.oldest_age_s,
            added=self.entries_added,
            drained=self.drained_total,
            writers=self.writers_alive,
        )


@dataclass(frozen=True, slots=True)
class Point:
    """One second of history. ``added`` and ``drained`` are running totals."""

    t: float
    backlog: int
    pending: int
    lag: int
    oldest_age_s: float
    added: int
    drained: int
    writers: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def entry_ms(entry_id: bytes | str) -> int:
    return int(_text(entry_id).partition("-")[0])


class QueueStats:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self._history_key = settings.key(c.OPS_HISTORY_KEY)

    async def snapshot(self) -> QueueSnapshot:
        """One round trip; raises DependencyUnavailable when Redis cannot answer."""
        keys = self.settings.stream_keys()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.time()
                for key in keys:
                    pipe.xinfo_stream(key)
                    pipe.xinfo_groups(key)
                pipe.get(self.settings.key(c.DRAIN_STATS_KEY))
                pipe.zrange(self.settings.key(c.WRITER_HEARTBEAT_KEY), 0, -1, withscores=True)
                replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # noqa: BLE001 - translated: the caller reports "down"
            raise unavailable(exc) from None
        for reply in replies:
            if isinstance(reply, Exception) and not _no_such_key(reply):
                raise unavailable(reply)
        seconds, micros = replies[0]
        now = int(seconds) + int(micros) / 1e6
        shards = tuple(
            _shard(n, replies[1 + 2 * n], replies[2 + 2 * n], now) for n in range(len(keys))
        )
        drained = int(replies[-2] or 0)
        alive = sum(
            1 for _name, beat in replies[-1] if now - float(beat) < c.WRITER_HEARTBEAT_TTL_S
        )
        return QueueSnapshot(now, shards, drained, alive)

    # -- history -----------------------------------------------------------------------
    async def record(self, snap: QueueSnapshot) -> bool:
        """Add this snapshot as the point of its second, unless another process already
        did. True when this one was written."""
        point = snap.point()
        fields: dict[Any, Any] = {
            "b": point.backlog,
            "p": point.pending,
            "l": point.lag,
            "o": round(point.oldest_age_s, 3),
            "a": point.added,
            "d": point.drained,
            "w": point.writers,
            "t": round(point.t, 3),
        }
        try:
            await self.redis.xadd(
                self._history_key,
                fields,
                id=f"{int(point.t) * 1000}-0",
                maxlen=c.OPS_HISTORY_LEN,
                approximate=True,
            )
            return True
        except rexc.ResponseError as exc:
            if "equal or smaller" in str(exc):
                return False
            raise unavailable(exc) from None
        except Exception as exc:  # noqa: BLE001
            raise unavailable(exc) from None

    async def history(self, seconds: float) -> list[Point]:
        """Points of the last ``seconds``, oldest first."""
        count = max(int(seconds / c.OPS_SAMPLE_INTERVAL_S) + 1, 2)
        try:
            rows = await self.redis.xrevrange(self._history_key, count=count)
        except Exception as exc:  # noqa: BLE001
            raise unavailable(exc) from None
        points = [_point(fields) for _id, fields in reversed(rows)]
        if points:
            newest = points[-1].t
            points = [p for p in points if newest - p.t <= seconds]
        return points


def _no_such_key(exc: Exception) -> bool:
    return isinstance(exc, rexc.ResponseError) and "no such key" in str(exc).lower()


def _shard(shard: int, info: Any, groups: Any, now: float) -> ShardStats:
    if isinstance(info, Exception):  # the stream does not exist (yet): nothing queued
        return ShardStats(shard, 0, 0, 0, 0.0, 0)
    backlog = int(info.get("length", 0))
    first = info.get("first-entry")
    oldest = max(now - entry_ms(first[0]) / 1000, 0.0) if backlog and first else 0.0
    pending = lag = 0
    group = None
    if not isinstance(groups, Exception):
        group = next((g for g in groups if _text(g.get("name", b"")) == c.CONSUMER_GROUP), None)
    if group is not None:
        pending = int(group.get("pending", 0))
        # Redis reports lag as nil when deletions make it uncertain; entries are deleted
        # only when acknowledged, so what is neither pending nor delivered is the rest.
        raw_lag = group.get("lag")
        lag = int(raw_lag) if raw_lag is not None else max(backlog - pending, 0)
    else:
        lag = backlog
    added = int(info.get("entries-added", 0) or 0)
    return ShardStats(shard, backlog, pending, lag, oldest, added)


def _point(fields: dict[bytes, bytes]) -> Point:
    def num(key: str) -> float:
        return float(fields.get(key.encode(), b"0") or 0)

    return Point(
        t=num("t"),
        backlog=int(num("b")),
        pending=int(num("p")),
        lag=int(num("l")),
        oldest_age_s=num("o"),
        added=int(num("a")),
        drained=int(num("d")),
        writers=int(num("w")),
    )


@dataclass(frozen=True, slots=True)
class Rates:
    intake_per_s: float
    drain_per_s: float
    window_s: float

    @property
    def net_drain_per_s(self) -> float:
        return self.drain_per_s - self.intake_per_s


def rates(points: Sequence[Point], window_s: float = RATE_WINDOW_S) -> Rates | None:
    """Intake and drain rates over the last ``window_s`` of ``points`` (None: too few)."""
    if len(points) < 2:
        return None
    last = points[-1]
    first = next((p for p in points if last.t - p.t <= window_s), points[-2])
    if first is last:
        first = points[-2]
    span = last.t - first.t
    if span <= 0:
        return None
    # Totals restart when a stream or counter is recreated: never report a negative rate.
    return Rates(
        intake_per_s=max(last.added - first.added, 0) / span,
        drain_per_s=max(last.drained - first.drained, 0) / span,
        window_s=span,
    )


def series(points: Sequence[Point], window_s: float = RATE_WINDOW_S) -> list[dict[str, Any]]:
    """Points with the smoothed rates at each of them, for charts."""
    out: list[dict[str, Any]] = []
    for i, point in enumerate(points):
        r = rates(points[max(0, i - int(window_s) - 1) : i + 1], window_s)
        row = point.as_dict()
        row["intake_rate"] = round(r.intake_per_s, 2) if r else 0.0
        row["drain_rate"] = round(r.drain_per_s, 2) if r else 0.0
        out.append(row)
    return out


def time_to_drain(backlog: int, r: Rates | None) -> float | None:
    """Seconds until the backlog is empty at the current rates; None when it is not
    shrinking (or there are no rates yet); 0 when there is nothing to drain."""
    if backlog <= 0:
        return 0.0
    if r is None or r.net_drain_per_s <= 0:
        return None
    return backlog / r.net_drain_per_s
