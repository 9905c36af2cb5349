"""Once a second during a run: backlog depth, Redis memory, rows drained and the CPU time
each role has used, into ``samples.csv`` for the report.

Runs in a thread of the runner with a synchronous Redis client. The backlog is the sum of
XLEN over the intake streams (entries leave a stream only after their commit, so its
length is the backlog); the stream's own memory comes from ``MEMORY USAGE`` so that the
bytes per queued registration are measured, not inferred. Without a Redis URL (a remote
deployment) the backlog comes from the gateway's ``/readyz``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import constants as c

log = logging.getLogger(__name__)

FIELDS = (
    "t",
    "backlog",
    "pending",
    "stream_bytes",
    "used_memory",
    "drained",
    "keys",
    "cpu_gateway",
    "cpu_writer",
    "cpu_redis",
    "cpu_postgres",
    "cpu_locust",
)
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def tree_cpu_seconds(roots: list[int], tree: dict[int, list[int]]) -> dict[int, float]:
    """CPU seconds of each live process under ``roots`` (the roots included)."""
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(tree.get(pid, ()))
    return {pid: _cpu_seconds(pid) for pid in seen}


class Sampler:
    def __init__(
        self,
        path: Path,
        *,
        url: str,
        redis_url: str,
        key_prefix: str,
        shards: int,
        roles: Callable[[], dict[str, list[int]]],
        interval_s: float = 1.0,
    ) -> None:
        self.path = path
        self.url = url
        self.redis_url = redis_url
        self.prefix = key_prefix
        self.shards = shards
        self.roles = roles
        self.interval_s = interval_s
        self.last: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._redis: Any = None
        self._cpu: dict[str, dict[int, float]] = {}  # role -> pid -> CPU seconds last seen

    def start(self) -> Sampler:
        if self.redis_url:
            import redis

            self._redis = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        if self._redis is not None:
            self._redis.close()

    def _run(self) -> None:
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS)
            writer.writeheader()
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    row = self.sample()
                except Exception as exc:  # noqa: BLE001 - a missed sample is not fatal
                    log.warning("sample failed: %s", type(exc).__name__)
                else:
                    self.last = row
                    writer.writerow(row)
                    handle.flush()
                self._stop.wait(max(self.interval_s - (time.monotonic() - started), 0.05))

    def sample(self) -> dict[str, float]:
        row: dict[str, float] = {name: 0.0 for name in FIELDS}
        row["t"] = round(time.time(), 3)
        if self._redis is not None:
            row.update(self._from_redis())
        else:
            row["backlog"] = backlog_from_readyz(self.url)
        tree = _children()
        for role, roots in self.roles().items():
            # A process that exited keeps the CPU it was last seen with: the counters
            # never go down (Locust's workers and a writer's children come and go).
            known = self._cpu.setdefault(role, {})
            for pid, seconds in tree_cpu_seconds(roots, tree).items():
                known[pid] = max(known.get(pid, 0.0), seconds)
            row[f"cpu_{role}"] = round(sum(known.values()), 2)
        return row

    def _from_redis(self) -> dict[str, float]:
        streams = [self.prefix + c.STREAM_KEY.format(shard=s) for s in range(self.shards)]
        pipe = self._redis.pipeline(transaction=False)
        for key in streams:
            pipe.xlen(key)
        for key in streams:
            pipe.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0")
        for key in streams:
            pipe.execute_command("XPENDING", key, c.CONSUMER_GROUP)
        pipe.info("memory")
        pipe.get(self.prefix + c.DRAIN_STATS_KEY)
        pipe.dbsize()
        replies = pipe.execute(raise_on_error=False)
        n = len(streams)
        lengths, memory, pending = replies[:n], replies[n : 2 * n], replies[2 * n : 3 * n]
        info, drained, keys = replies[3 * n :]
        return {
            "backlog": sum(int(x) for x in lengths if isinstance(x, int)),
            "stream_bytes": sum(int(x) for x in memory if isinstance(x, int)),
            "pending": sum(int(p[0]) for p in pending if isinstance(p, list | tuple) and p),
            "used_memory": int(info.get("used_memory", 0)) if isinstance(info, dict) else 0,
            "drained": int(drained or 0) if not isinstance(drained, Exception) else 0,
            "keys": int(keys) if isinstance(keys, int) else 0,
        }


def backlog_from_readyz(url: str) -> float:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=3) as resp:
            return float(json.loads(resp.read()).get("backlog", -1))
    except OSError as exc:
        # A 503 from /readyz still carries the backlog in its body.
        body = getattr(exc, "read", None)
        if body is not None:
            try:
                return float(json.loads(body()).get("backlog", -1))
            except ValueError:
                pass
        return -1.0


def dedupe_key_bytes(redis_url: str, key_prefix: str, sample: int = 200) -> float:
    """Average ``MEMORY USAGE`` of up to ``sample`` dedupe keys (0 when none)."""
    import redis

    client: Any = redis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        sizes = []
        match = key_prefix + c.DEDUPE_KEY.split(":", 1)[0] + ":*"
        for key in client.scan_iter(match=match, count=1000):
            usage = client.memory_usage(key, samples=0)
            if usage:
                sizes.append(int(usage))
            if len(sizes) >= sample:
                break
        return sum(sizes) / len(sizes) if sizes else 0.0
    finally:
        client.close()
