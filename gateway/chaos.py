"""``gateway chaos``: break real servers under load, then prove nothing acknowledged was
lost or duplicated.

Each scenario gets its own private Redis and its own database (cloned from a migrated,
seeded template in one private PostgreSQL), and real ``gateway serve`` / ``gateway writer``
processes on free loopback ports. A paced load of realistic submissions (new people,
retries, respellings, conflicts, invalid bodies) runs while the fault is injected; clients
retry 503/429/no-answer after ``min(Retry-After, 1 s)`` like an impatient app would. When
the load stops and the queue has drained, every registration id answered 202/200 is
looked up in PostgreSQL:

* lost: answered 202/200 but neither stored nor dead-lettered;
* duplicated: one person answered with two different ids, or stored twice;
* crossed: the row stored under an answered id belongs to somebody else (a reply read
  by the wrong request);
* 5xx: any 5xx other than 503 with ``Retry-After`` (a 500 is always a bug).

``--short`` runs a subset with second-long faults (part of the test suite); the full run
includes a 30-second PostgreSQL outage. Load stays on 127.0.0.1, bounded in rate and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from gateway import constants as c
from gateway import devstack
from gateway.connections import ResponseError, client
from gateway.settings import Settings

RETRY_CAP_S = 1.0  # the load clients wait min(Retry-After, this) before retrying
ATTEMPT_TIMEOUT_S = 15.0  # an attempt slower than this counts as a hang


# --- load --------------------------------------------------------------------------
@dataclass(slots=True)
class Attempt:
    at: float  # seconds since the load started
    latency: float
    status: int  # 0: no answer (refused, reset, timed out)
    retry_after: str | None
    error: str  # the body's "error" code, or the exception name


@dataclass
class Tally:
    attempts: list[Attempt] = field(default_factory=list)
    accepted: dict[str, str] = field(default_factory=dict)  # registration id -> identity
    ids_of: dict[str, set[str]] = field(default_factory=dict)  # identity -> ids answered
    finals: Counter[int] = field(default_factory=Counter)
    unanswered: int = 0

    def between(self, start: float, end: float) -> list[Attempt]:
        return [a for a in self.attempts if start <= a.at < end]


class Load:
    """Paced submissions from a deterministic generator, each retried until answered."""

    def __init__(self, url: str, *, seed: int, rate: float, concurrency: int = 12) -> None:
        from gateway.datagen import Generator

        self.url = url.rstrip("/")
        self.seed = seed
        self.rate = rate
        self.concurrency = concurrency
        self.tally = Tally()
        self._subs: Iterator[Any] = Generator(seed).submissions(10**7)
        self._extra: list[Any] = []
        self._running = asyncio.Event()
        self._stopping = False
        self._deadline = float("inf")
        self._t0 = time.monotonic()
        self._next = self._t0
        self._session: aiohttp.ClientSession | None = None
        self._workers: list[asyncio.Task[None]] = []
        self.in_flight = 0

    def now(self) -> float:
        return time.monotonic() - self._t0

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT_S),
            connector=aiohttp.TCPConnector(limit=self.concurrency * 2),
        )
        self._t0 = self._next = time.monotonic()
        self._running.set()
        self._workers = [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._next = time.monotonic()
        self._running.set()

    def add(self, submission: Any) -> None:
        """Send this submission next (e.g. a request a rude client abandoned)."""
        self._extra.append(submission)

    async def stop(self, settle_s: float = 40.0) -> Tally:
        """Stop taking new submissions; give those in hand ``settle_s`` to be answered."""
        self._stopping = True
        self._deadline = time.monotonic() + settle_s
        self._running.set()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        return self.tally

    async def _worker(self) -> None:
        while True:
            await self._running.wait()
            if self._extra:
                submission = self._extra.pop()
            elif self._stopping:
                return
            else:
                slot, self._next = self._next, max(self._next, time.monotonic()) + 1 / self.rate
                await asyncio.sleep(max(0.0, slot - time.monotonic()))
                if not self._running.is_set() or self._stopping:
                    continue
                submission = next(self._subs)
            self.in_flight += 1
            try:
                await self.submit(submission)
            finally:
                self.in_flight -= 1

    async def submit(self, sub: Any) -> int:
        """Send one submission, retrying shed and unanswered attempts; the final status."""
        assert self._session is not None
        headers = {"Content-Type": "application/json", "X-Channel": sub.channel}
        if sub.idempotency_key:
            headers["Idempotency-Key"] = sub.idempotency_key
        data = sub.body if isinstance(sub.body, bytes) else orjson.dumps(sub.body)
        while True:
            started = time.monotonic()
            status, retry_after, body, error = 0, None, b"", ""
            try:
                async with self._session.post(self.url + "/v1/registrations", data=data,
                                              headers=headers) as resp:
                    status, retry_after = resp.status, resp.headers.get("Retry-After")
                    body = await resp.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = type(exc).__name__
            attempt = Attempt(started - self._t0, time.monotonic() - started, status,
                              retry_after, error or _error_code(body))
            self.tally.attempts.append(attempt)
            if status in (200, 202):
                rid = str(orjson.loads(body)["registration_id"])
                self.tally.accepted[rid] = sub.identity
                self.tally.ids_of.setdefault(sub.identity, set()).add(rid)
            if status not in (0, 429, 503):
                self.tally.finals[status] += 1
                return status
            if time.monotonic() > self._deadline:
                self.tally.unanswered += 1
                return status
            wait = min(float(retry_after or 0.3), RETRY_CAP_S)
            await asyncio.sleep(wait * random.uniform(0.5, 1.0))


def _error_code(body: bytes) -> str:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    return str(parsed.get("error", "")) if isinstance(parsed, dict) else ""


# --- the stack under test ----------------------------------------------------------
@dataclass
class Cluster:
    """The one private PostgreSQL of a chaos run and its migrated, seeded template."""

    root: Path
    pg: devstack.Service
    template: str = "chaos_template"

    @classmethod
    async def start(cls, root: Path) -> Cluster:
        from gateway.runner import prepare

        pg = await asyncio.to_thread(devstack.start_postgres, root / "postgres")
        cluster = cls(root, pg)
        await _admin(pg.url, f'DROP DATABASE IF EXISTS "{cluster.template}"')
        await _admin(pg.url, f'CREATE DATABASE "{cluster.template}"')
        await prepare(Settings(database_url=_with_database(pg.url, cluster.template)),
                      dev_sites=True)
        return cluster

    def restart_postgres(self) -> None:
        assert self.pg.data_dir is not None
        self.pg = devstack.start_postgres(self.pg.data_dir, self.pg.port)


class Harness:
    """Private Redis + a fresh database + gateway and writer processes for one scenario."""

    def __init__(self, cluster: Cluster, name: str, *,
                 redis_options: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.cluster, self.name, self.root = cluster, name, cluster.root
        self.redis_options = dict(redis_options or {})
        self.redis_dir = cluster.root / f"redis-{name}"
        self.redis: devstack.Service | None = None
        self.port = devstack.free_port()
        self.writer_metrics_port = devstack.free_port()
        self.database = f"chaos_{name}_{uuid.uuid4().hex[:6]}"
        self.database_url = _with_database(cluster.pg.url, self.database)
        self.extra_env = dict(env or {})
        self.gateways: list[subprocess.Popen[bytes]] = []
        self.writers: list[subprocess.Popen[bytes]] = []
        self._logs: list[Any] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def settings(self) -> Settings:
        assert self.redis is not None
        return Settings(redis_url=self.redis.url, database_url=self.database_url)

    async def up(self, gateways: int = 1, writers: int = 1) -> None:
        self.redis = await asyncio.to_thread(
            devstack.start_redis, self.redis_dir, **self.redis_options
        )
        await _admin(self.cluster.pg.url,
                     f'CREATE DATABASE "{self.database}" TEMPLATE "{self.cluster.template}"')
        for _ in range(gateways):
            self.start_gateway()
        for _ in range(writers):
            self.start_writer()
        await self.wait_ready()

    def env(self) -> dict[str, str]:
        assert self.redis is not None
        keep = {k: v for k, v in os.environ.items()
                if not k.startswith(("GATEWAY_", "PG")) and k.upper() not in _NOT_INHERITED}
        keep.update(CHAOS_ENV)
        keep.update(REDIS_URL=self.redis.url, DATABASE_URL=self.database_url,
                    GATEWAY_PORT=str(self.port),
                    GATEWAY_WRITER_METRICS_PORT=str(self.writer_metrics_port))
        keep.update(self.extra_env)
        return keep

    def _spawn(self, command: str, label: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"{self.name}-{label}.log").open("ab")
        self._logs.append(log)
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", command], env=self.env(), stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def start_gateway(self) -> subprocess.Popen[bytes]:
        proc = self._spawn("serve", f"gateway{len(self.gateways)}")
        self.gateways.append(proc)
        return proc

    def start_writer(self) -> subprocess.Popen[bytes]:
        proc = self._spawn("writer", f"writer{len(self.writers)}")
        self.writers.append(proc)
        return proc

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
            while time.monotonic() < deadline:
                if any(p.poll() is not None for p in self.gateways + self.writers):
                    raise RuntimeError(f"a process of {self.name} exited early; see {self.root}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    async with session.get(self.url + "/readyz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name}: gateway not ready in {timeout_s:.0f}s; see {self.root}")

    def restart_redis(self) -> None:
        assert self.redis is not None
        port = self.redis.port
        self.redis = devstack.start_redis(self.redis_dir, port, **self.redis_options)

    async def writer_metric(self, name: str) -> float:
        """A counter from the writer's own /metrics (0 when absent)."""
        url = f"http://127.0.0.1:{self.writer_metrics_port}/metrics"
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
            text = await resp.text()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name) and not line.startswith("#"))

    def redis_client(self) -> Any:
        return client(self.settings, timeout_s=5.0)

    async def backlog(self) -> tuple[int, int]:
        """(stream length, pending) of shard 0, the only shard the chaos stack uses."""
        r = self.redis_client()
        try:
            key = self.settings.stream_key(0)
            length = int(await r.xlen(key))
            try:
                pending = int((await r.xpending(key, c.CONSUMER_GROUP))["pending"])
            except ResponseError:
                pending = 0
            return length, pending
        finally:
            await r.aclose()

    async def wait_drained(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if await self.backlog() == (0, 0):
                    return True
            await asyncio.sleep(0.25)
        return False

    async def down(self) -> None:
        for proc in self.gateways + self.writers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.gateways + self.writers:
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        for log in self._logs:
            log.close()
        if self.redis is not None:
            if self.redis.pid:  # a scenario may have left it stopped (SIGSTOP)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.redis.pid, signal.SIGCONT)
            await asyncio.to_thread(self.redis.stop)
        with contextlib.suppress(Exception):
            await _admin(self.cluster.pg.url, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


_NOT_INHERITED = ("REDIS_URL", "DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR")
CHAOS_ENV = {
    "GATEWAY_LOG_LEVEL": "WARNING",
    "GATEWAY_IDENTITY_SECRET": "chaos-" + uuid.uuid4().hex,
    "GATEWAY_CLAIM_IDLE_MS": "2000",
    "GATEWAY_CLAIM_INTERVAL_S": "0.5",
    "GATEWAY_WRITER_BLOCK_MS": "250",
    "GATEWAY_PG_COMMAND_TIMEOUT_S": "2",
    "GATEWAY_PG_ACQUIRE_TIMEOUT_S": "2",
    "GATEWAY_REFERENCE_REFRESH_S": "2",
    "GATEWAY_SHUTDOWN_GRACE_S": "5",
    "GATEWAY_RETRY_AFTER_MAX_S": "20",
}


def _with_database(url: str, name: str) -> str:
    return f"{url.rpartition('/')[0]}/{name}"


async def _admin(url: str, sql: str) -> None:
    from gateway.store import Store

    store = await Store.open(Settings(database_url=url, pg_pool_max=1), migrate_schema=False)
    try:
        async with store.connection() as conn:
            await conn.execute(sql)
    finally:
        await store.close()


# --- reconciliation and the table ---------------------------------------------------
@dataclass
class Row:
    scenario: str
    requests: int = 0
    accepted: int = 0  # 202
    replayed: int = 0  # 200
    shed: int = 0  # 503 with Retry-After
    server_errors: int = 0  # any other 5xx, or a 503 without Retry-After
    no_answer: int = 0  # refused, reset or timed out (retried)
    lost: int = 0
    duplicated: int = 0
    crossed: int = 0
    dead_lettered: int = 0
    worst_latency_s: float = 0.0
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.failed or self.lost or self.duplicated or self.crossed
                    or self.server_errors)


async def reconcile(database_url: str, tally: Tally, row: Row) -> None:
    """Fill the row's lost / duplicated / crossed / dead-lettered counts from PostgreSQL."""
    from gateway.store import Store

    ids = list(tally.accepted)
    store = await Store.open(Settings(database_url=database_url, pg_pool_max=1),
                             migrate_schema=False)
    try:
        async with store.connection() as conn:
            stored = {r[0]: r[1] for r in await conn.fetch(
                "SELECT registration_id, id_type || ':' || id_number FROM registrations"
                " WHERE registration_id = ANY($1::text[])", ids)}
            dead = {r[0] for r in await conn.fetch(
                "SELECT registration_id FROM dead_letters WHERE registration_id = ANY($1::text[])",
                ids)}
            twice = int(await conn.fetchval(
                "SELECT count(*) - count(DISTINCT (id_type, id_number)) FROM registrations"))
    finally:
        await store.close()
    row.lost = sum(1 for rid in ids if rid not in stored and rid not in dead)
    row.crossed = sum(1 for rid, who in stored.items() if who != tally.accepted[rid])
    row.duplicated = twice + sum(len(found) - 1 for found in tally.ids_of.values())
    row.dead_lettered = len(dead)


def tally_into(row: Row, tally: Tally) -> None:
    row.requests = len(tally.attempts)
    statuses = Counter(a.status for a in tally.attempts)
    row.accepted, row.replayed = statuses[202], statuses[200]
    row.shed = sum(1 for a in tally.attempts if a.status == 503 and a.retry_after)
    row.server_errors = sum(
        1 for a in tally.attempts if a.status >= 500 and not (a.status == 503 and a.retry_after)
    )
    row.no_answer = statuses[0]
    row.worst_latency_s = max((a.latency for a in tally.attempts), default=0.0)
    if row.no_answer:
        kinds = Counter(a.error for a in tally.attempts if a.status == 0)
        row.notes.append(f"no answer (retried): {dict(kinds)}")
    if tally.unanswered:
        row.failed.append(f"{tally.unanswered} submissions never answered")


HEADER = ("scenario", "requests", "202", "200", "503+RA", "5xx", "no answer", "lost",
          "duplicated", "crossed", "worst s", "result")


def render(rows: list[Row]) -> str:
    lines = [[r.scenario, str(r.requests), str(r.accepted), str(r.replayed), str(r.shed),
              str(r.server_errors), str(r.no_answer), str(r.lost), str(r.duplicated),
              str(r.crossed), f"{r.worst_latency_s:.2f}", "ok" if r.ok else "FAIL"]
             for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(HEADER)]

    def fmt(cells: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                                 for i, (cell, w) in enumerate(zip(cells, widths))) + " |"

    out = [fmt(list(HEADER)), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt(line) for line in lines]
    for r in rows:
        for text in r.notes:
            out.append(f"  {r.scenario}: {text}")
        for text in r.failed:
            out.append(f"  {r.scenario}: FAILED: {text}")
    return "\n".join(out)


# --- scenarios ---------------------------------------------------------------------
@dataclass(frozen=True)
class Pace:
    warmup_s: float  # load before the fault
    outage_s: float  # how long the fault lasts
    recover_s: float  # load after the fault
    pg_outage_s: float  # PostgreSQL down (the issue asks for 30 s in the full run)
    rate: float  # submissions per second
    drain_s: float = 60.0


FULL = Pace(warmup_s=3.0, outage_s=5.0, recover_s=4.0, pg_outage_s=30.0, rate=150.0)
SHORT = Pace(warmup_s=0.8, outage_s=2.0, recover_s=1.2, pg_outage_s=2.5, rate=80.0, drain_s=30.0)


@dataclass
class Run:
    h: Harness
    load: Load
    pace: Pace
    row: Row

    def check(self, ok: object, message: str) -> None:
        if not ok:
            self.row.failed.append(message)

    def note(self, message: str) -> None:
        self.row.notes.append(message)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def signal_redis(self, sig: int) -> None:
        assert self.h.redis is not None and self.h.redis.pid is not None
        os.kill(self.h.redis.pid, sig)

    async def redis_stats(self) -> dict[str, Any]:
        r = self.h.redis_client()
        try:
            stats: dict[str, Any] = dict(await r.info("commandstats"))
            stats.update(await r.info("errorstats"))
            return stats
        finally:
            await r.aclose()


def _calls(stats: dict[str, Any], name: str) -> int:
    entry = stats.get(name)
    if isinstance(entry, dict):
        return int(entry.get("calls") or entry.get("count") or 0)
    return 0


def _dependency_window(run: Run, start: float, end: float, what: str) -> None:
    """While a dependency of intake is down: honest 503s with Retry-After, answered fast."""
    during = run.load.tally.between(start + 0.3, end)
    shed = [a for a in during if a.status == 503]
    worst = max((a.latency for a in during), default=0.0)
    run.check(shed, f"no 503 while {what}")
    run.check(all(a.retry_after for a in shed), "a 503 without Retry-After")
    limit = float(CHAOS_ENV.get("GATEWAY_APPEND_TIMEOUT_S", c.DEFAULT_APPEND_TIMEOUT_S)) + 1.0
    run.check(worst <= limit, f"an answer took {worst:.2f}s while {what} (limit {limit:.1f}s)")
    after = [a for a in run.load.tally.between(end, float("inf")) if a.status == 202]
    run.check(after, f"no 202 after {what} ended")
    run.note(f"{what} for {end - start:.1f}s: {len(shed)} answered 503 + Retry-After, "
             f"slowest answer then {worst:.2f}s; 202s resumed by themselves")


async def redis_restart(run: Run) -> None:
    await run.sleep(run.pace.warmup_s)
    assert run.h.redis is not None
    start = run.load.now()
    await asyncio.to_thread(run.h.redis.stop)  # SIGTERM: Redis writes its AOF and exits
    await run.sleep(run.pace.outage_s)
    await asyncio.to_thread(run.h.restart_redis)
    end = run.load.now()
    await run.sleep(run.pace.recover_s)
    _dependency_window(run, start, end, "Redis was down")


async def redis_crash(run: Run) -> None:
    await run.sleep(run.pace.warmup_s)
    assert run.h.redis is not None
    stats = await run.redis_stats()
    if run.h.extra_env.get("GATEWAY_DURABILITY") == "strict":
        waitaof = _calls(stats, "cmdstat_waitaof")
        fsync = run.h.redis_options.get("appendfsync", "everysec")
        run.check(waitaof or fsync == "always", "strict mode confirmed nothing (no WAITAOF)")
        run.note(f"strict: appendfsync {fsync}, {waitaof} WAITAOF calls before the crash")
    start = run.load.now()
    await asyncio.to_thread(run.h.redis.kill)  # SIGKILL: no chance to flush anything
    await run.sleep(run.pace.outage_s)
    await asyncio.to_thread(run.h.restart_redis)
    end = run.load.now()
    await run.sleep(run.pace.recover_s)
    _dependency_window(run, start, end, "Redis was killed")


async def redis_frozen(run: Run) -> None:
    await run.sleep(run.pace.warmup_s)
    start = run.load.now()
    run.signal_redis(signal.SIGSTOP)  # a hung server: connections open, no replies
    try:
        await run.sleep(run.pace.outage_s)
    finally:
        run.signal_redis(signal.SIGCONT)
    end = run.load.now()
    await run.sleep(run.pace.recover_s)
    _dependency_window(run, start, end, "Redis was frozen")


async def redis_oom(run: Run) -> None:
    await run.sleep(run.pace.warmup_s)
    r = run.h.redis_client()
    try:
        used = int((await r.info("memory"))["used_memory"])
        await r.config_set("maxmemory", str(max(used - 64 * 1024, 1024 * 1024)))
        start = run.load.now()
        await run.sleep(run.pace.outage_s)
        await r.config_set("maxmemory", "0")
        end = run.load.now()
    finally:
        await r.aclose()
    await run.sleep(run.pace.recover_s)
    _dependency_window(run, start, end, "Redis was out of memory")


async def group_destroyed(run: Run) -> None:
    await run.sleep(run.pace.warmup_s)
    before = await run.redis_stats()
    r = run.h.redis_client()
    try:
        await r.xgroup_destroy(run.h.settings.stream_key(0), c.CONSUMER_GROUP)
    finally:
        await r.aclose()
    await run.sleep(run.pace.recover_s + 1.0)
    await _no_spin(run, before, await run.redis_stats(), "the group was destroyed")


async def stream_deleted(run: Run) -> None:
    await run.sleep(run.pace.warmup_s)
    run.load.pause()  # an operator's DEL on a drained stream: nothing queued is lost
    while run.load.in_flight:
        await run.sleep(0.05)
    run.check(await run.h.wait_drained(30.0), "stream did not drain before the DEL")
    before = await run.redis_stats()
    r = run.h.redis_client()
    try:
        await r.delete(run.h.settings.stream_key(0))
    finally:
        await r.aclose()
    run.load.resume()
    await run.sleep(run.pace.recover_s + 1.0)
    await _no_spin(run, before, await run.redis_stats(), "the stream key was deleted")


async def _no_spin(run: Run, before: dict[str, Any], after: dict[str, Any], what: str) -> None:
    nogroup = _calls(after, "errorstat_NOGROUP") - _calls(before, "errorstat_NOGROUP")
    created = _calls(after, "cmdstat_xgroup|create") - _calls(before, "cmdstat_xgroup|create")
    alarm = await run.h.writer_metric("writer_group_recreated_total")
    run.check(1 <= created <= 5, f"group created {created} times after {what}")
    run.check(nogroup <= 10, f"{nogroup} NOGROUP errors after {what}: the writer spins")
    run.check(alarm >= 1, "writer_group_recreated_total did not rise")
    run.note(f"{what}: writer saw NOGROUP {nogroup}x, recreated the group {created}x, "
             f"writer_group_recreated_total={alarm:.0f}")


DELETED_PENDING = 600  # more than one XAUTOCLAIM page (GATEWAY_WRITER_BATCH=200)


async def deleted_pending(run: Run) -> None:
    await run.sleep(run.pace.warmup_s)
    key = run.h.settings.stream_key(0)
    r = run.h.redis_client()
    try:
        # A writer that died holding entries which an operator then deleted by hand; it
        # also held whatever real registrations were unread (they must be reclaimed).
        # One transaction, so that the real writer cannot read the injected entries first.
        async with r.pipeline(transaction=True) as pipe:
            for _ in range(DELETED_PENDING):
                pipe.xadd(key, {"chaos": "deleted-while-pending"})
            pipe.xreadgroup(c.CONSUMER_GROUP, "chaos-dead-writer", {key: ">"}, count=10_000)
            replies = await pipe.execute()
        await r.xdel(key, *replies[:DELETED_PENDING])
    finally:
        await r.aclose()
    held = sum(len(messages) for _key, messages in replies[-1] or []) - DELETED_PENDING
    run.note(f"a dead writer held {held} live registrations too; they must be reclaimed")
    await run.sleep(max(run.pace.recover_s, 2.0) + 2.5)  # claim idle is 2 s


async def deleted_pending_check(run: Run) -> None:
    from gateway.store import Store

    r = run.h.redis_client()
    try:
        left = await r.xpending_range(run.h.settings.stream_key(0), c.CONSUMER_GROUP,
                                      min="-", max="+", count=10, consumername="chaos-dead-writer")
    finally:
        await r.aclose()
    run.check(not left, f"{len(left)} entries still pending for the dead writer")
    store = await Store.open(Settings(database_url=run.h.database_url, pg_pool_max=1),
                             migrate_schema=False)
    try:
        async with store.connection() as conn:
            recorded = int(await conn.fetchval(
                "SELECT count(*) FROM dead_letters WHERE reason = 'deleted_while_pending'"))
    finally:
        await store.close()
    counted = await run.h.writer_metric("writer_deleted_pending_total")
    run.check(counted == DELETED_PENDING, f"writer_deleted_pending_total={counted:.0f}")
    run.check(recorded == DELETED_PENDING,
              f"{recorded} of {DELETED_PENDING} deleted entries recorded in dead_letters")
    run.note(f"{DELETED_PENDING} pending entries deleted under a dead writer: skipped, "
             f"{recorded} recorded in dead_letters, the reclaim cursor followed to the end")


async def postgres_down(run: Run) -> None:
    await run.sleep(run.pace.warmup_s)
    cluster = run.h.cluster
    await asyncio.to_thread(cluster.pg.kill)  # a crash, not a clean shutdown
    start = run.load.now()
    samples: list[int] = []
    while run.load.now() - start < run.pace.pg_outage_s:
        samples.append((await run.h.backlog())[0])
        await run.sleep(0.25)
    await asyncio.to_thread(cluster.restart_postgres)
    end = run.load.now()
    accepted = [a for a in run.load.tally.between(start, end) if a.status == 202]
    run.check(accepted, "intake stopped answering 202 while PostgreSQL was down")
    shrank = sum(1 for a, b in itertools.pairwise(samples) if b < a)
    run.check(samples and samples[-1] > samples[0], "the backlog did not grow during the outage")
    run.check(not shrank, "entries left the stream while PostgreSQL was down (acked uncommitted)")
    recovered = time.monotonic()
    await run.sleep(run.pace.recover_s)
    run.load.pause()
    drained = await run.h.wait_drained(run.pace.drain_s)
    run.load.resume()
    run.note(f"PostgreSQL down {end - start:.0f}s: {len(accepted)} answered 202, backlog "
             f"{samples[0] if samples else 0} -> {max(samples, default=0)} and never shrank; "
             + (f"drained {time.monotonic() - recovered:.1f}s after restart" if drained
                else "not drained"))


async def _hold_lock(database_url: str, held: asyncio.Event, release: asyncio.Event) -> None:
    from gateway.store import Store

    store = await Store.open(Settings(database_url=database_url, pg_pool_max=1),
                             migrate_schema=False)
    try:
        async with store.connection() as conn, conn.transaction():
            await conn.execute("LOCK TABLE registrations IN ACCESS EXCLUSIVE MODE")
            held.set()
            await release.wait()
    finally:
        await store.close()


async def postgres_slow(run: Run) -> None:
    await run.sleep(run.pace.warmup_s)
    held, release = asyncio.Event(), asyncio.Event()
    locker = asyncio.create_task(_hold_lock(run.h.database_url, held, release))
    await held.wait()
    start = run.load.now()
    probes: list[tuple[int, float]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        ids = list(run.load.tally.accepted)[:50]
        while run.load.now() - start < run.pace.outage_s + 2.0 and ids:
            t0 = time.monotonic()
            async with session.get(f"{run.h.url}/v1/registrations/{random.choice(ids)}") as resp:
                await resp.read()
                probes.append((resp.status, time.monotonic() - t0))
    release.set()
    await locker
    end = run.load.now()
    worst = max((t for _s, t in probes), default=0.0)
    limit = float(CHAOS_ENV["GATEWAY_PG_COMMAND_TIMEOUT_S"]) + float(
        CHAOS_ENV["GATEWAY_PG_ACQUIRE_TIMEOUT_S"]) + 1.0
    run.check(probes and worst <= limit, f"a status look-up waited {worst:.2f}s (limit {limit}s)")
    run.check(all(s in (200, 503) for s, _t in probes), "a status look-up failed otherwise")
    accepted = [a for a in run.load.tally.between(start, end) if a.status == 202]
    run.check(accepted, "intake stopped answering 202 while the table was locked")
    await run.sleep(run.pace.recover_s)
    run.note(f"table locked {end - start:.1f}s: {len(accepted)} answered 202; "
             f"{len(probes)} status look-ups answered {dict(Counter(s for s, _ in probes))}, "
             f"slowest {worst:.2f}s")


async def writer_killed(run: Run) -> None:
    await run.sleep(run.pace.warmup_s)
    held, release = asyncio.Event(), asyncio.Event()
    # Hold the table so the writer is surely mid-batch (read, not committed) when killed.
    locker = asyncio.create_task(_hold_lock(run.h.database_url, held, release))
    await held.wait()
    pending = 0
    for _ in range(40):
        pending = (await run.h.backlog())[1]
        if pending:
            break
        await run.sleep(0.1)
    victim = run.h.writers[-1]
    victim.kill()
    await asyncio.to_thread(victim.wait)
    release.set()
    await locker
    run.h.start_writer()
    run.check(pending, "the writer was not mid-batch when killed")
    await run.sleep(max(run.pace.recover_s, 2.5))
    run.note(f"writer SIGKILLed holding {pending} uncommitted entries; a new writer "
             "reclaimed them (XAUTOCLAIM)")


async def gateway_sigterm(run: Run) -> None:
    await run.sleep(run.pace.warmup_s)
    victim = run.h.gateways[0]
    start = time.monotonic()
    victim.terminate()
    code = await asyncio.to_thread(victim.wait, 30)
    took = time.monotonic() - start
    grace = float(CHAOS_ENV["GATEWAY_SHUTDOWN_GRACE_S"])
    run.check(code == 0, f"gateway exited with {code} on SIGTERM")
    run.check(took <= grace + 2.0, f"gateway took {took:.1f}s to stop (grace {grace:.0f}s)")
    run.h.start_gateway()  # a rolling restart: the replacement shares the port
    await run.sleep(run.pace.recover_s)
    run.note(f"one of two gateways on the port SIGTERMed under load: exited {code} in "
             f"{took:.1f}s; clients retried onto the other; replacement started")


async def client_disconnects(run: Run) -> None:
    from gateway.datagen import Generator

    await run.sleep(run.pace.warmup_s)
    rude = list(Generator(run.load.seed + 7919).submissions(
        60, retry_share=0, respell_share=0, conflict_share=0, invalid_share=0))
    for i, sub in enumerate(rude):
        await _abandon(run.h.port, sub, mode=i % 3)
    await run.sleep(0.5)
    for sub in rude:  # the same people, now patient: each must get its own id back
        run.load.add(sub)
    await run.sleep(run.pace.recover_s)
    run.check(await _ready(run.h.url), "gateway not ready after rude clients")
    run.note(f"{len(rude)} requests abandoned mid-body, right after sending, or with RST; "
             "resent politely and checked against the stored rows")


async def _abandon(port: int, sub: Any, mode: int) -> None:
    body = orjson.dumps(sub.body)
    head = (f"POST /v1/registrations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nX-Channel: {sub.channel}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.write(head + (body[: len(body) // 2] if mode == 0 else body))
    await writer.drain()
    if mode == 2:
        await asyncio.sleep(0.002)
    writer.transport.abort()


async def _ready(url: str) -> bool:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.get(url + "/readyz") as resp:
            return resp.status == 200
    return False


async def backpressure(run: Run) -> None:
    await run.sleep(run.pace.warmup_s)
    writer = run.h.writers[-1]
    writer.send_signal(signal.SIGSTOP)  # the writers fall behind
    start = run.load.now()
    try:
        await run.sleep(run.pace.outage_s * 2)
    finally:
        writer.send_signal(signal.SIGCONT)
    end = run.load.now()
    await run.sleep(run.pace.recover_s + 1.0)
    shed = [a for a in run.load.tally.between(start, end + 1.0)
            if a.status == 503 and a.error == "overloaded"]
    waits = sorted({int(a.retry_after or 0) for a in shed})
    run.check(shed, "nothing was shed above the high-water mark")
    run.check(len(waits) >= 3, f"Retry-After without jitter: {waits}")
    ceiling = int(CHAOS_ENV["GATEWAY_RETRY_AFTER_MAX_S"]) * 1.3
    run.check(all(1 <= w <= ceiling for w in waits), f"Retry-After out of range: {waits}")
    resumed = [a for a in run.load.tally.between(end + 1.0, float("inf")) if a.status == 202]
    run.check(resumed, "no 202 once the writer caught up")
    run.note(f"writer paused {end - start:.1f}s: {len(shed)} shed as overloaded, Retry-After "
             f"{waits[0] if waits else '-'}..{waits[-1] if waits else '-'}s "
             f"({len(waits)} distinct values)")


# --- running -----------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    name: str
    inject: Callable[[Run], Awaitable[None]]
    short: bool = False
    gateways: int = 1
    redis_options: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    after: Callable[[Run], Awaitable[None]] | None = None  # checks once drained


_STRICT = {"GATEWAY_DURABILITY": "strict", "GATEWAY_MODE": "production"}

SCENARIOS: tuple[Spec, ...] = (
    Spec("redis_restart", redis_restart, short=True),
    Spec("redis_crash_strict", redis_crash, redis_options={"appendfsync": "always"},
         env=_STRICT),
    Spec("redis_crash_strict_waitaof", redis_crash, redis_options={"prefer": "wheels"},
         env=_STRICT),
    Spec("redis_crash_everysec", redis_crash),
    Spec("redis_frozen", redis_frozen),
    Spec("redis_oom", redis_oom),
    Spec("group_destroyed", group_destroyed),
    Spec("stream_deleted", stream_deleted),
    Spec("deleted_pending", deleted_pending, env={"GATEWAY_WRITER_BATCH": "200"},
         after=deleted_pending_check),
    Spec("postgres_down", postgres_down, short=True),
    Spec("postgres_slow", postgres_slow),
    Spec("writer_killed", writer_killed, short=True),
    Spec("gateway_sigterm", gateway_sigterm, gateways=2),
    Spec("client_disconnects", client_disconnects),
    Spec("backpressure", backpressure, env={"GATEWAY_BACKLOG_HIGH_WATER": "{high_water}"}),
)


async def run_scenario(spec: Spec, cluster: Cluster, pace: Pace, seed: int,
                       shared: Harness | None = None) -> Row:
    """One scenario on its own stack, or on ``shared`` (the short form: one gateway and
    one writer live through every fault, each row reconciled on its own)."""
    row = Row(spec.name)
    high_water = str(int(pace.rate * pace.outage_s * 0.6))
    env = {k: v.replace("{high_water}", high_water) for k, v in spec.env.items()}
    h = shared or Harness(cluster, spec.name, redis_options=spec.redis_options, env=env)
    load = Load(h.url, seed=seed, rate=pace.rate)
    try:
        if shared is None:
            await h.up(gateways=spec.gateways)
        await load.start()
        run = Run(h, load, pace, row)
        await spec.inject(run)
        tally = await load.stop()
        tally_into(row, tally)
        if not await h.wait_drained(pace.drain_s):
            row.failed.append(f"backlog not drained in {pace.drain_s:.0f}s")
        await reconcile(h.database_url, tally, row)
        if spec.after is not None:
            await spec.after(run)
    except Exception as exc:  # noqa: BLE001 - a broken scenario is a failed row, not a crash
        row.failed.append(f"{type(exc).__name__}: {exc}")
        if load.tally.attempts:
            tally_into(row, load.tally)
    finally:
        with contextlib.suppress(Exception):
            await load.stop(settle_s=0)
        if shared is None:
            await h.down()
    return row


def _plain(spec: Spec) -> bool:
    return not (spec.redis_options or spec.env or spec.after) and spec.gateways == 1


async def run_all(names: list[str], short: bool, root: Path, seed: int) -> list[Row]:
    pace = SHORT if short else FULL
    specs = [s for s in SCENARIOS if (s.name in names if names else (s.short or not short))]
    started = time.monotonic()
    cluster = await Cluster.start(root)
    shared: Harness | None = None
    rows: list[Row] = []
    try:
        if short and sum(_plain(s) for s in specs) > 1:
            shared = Harness(cluster, "short")
            await shared.up()
        print(f"chaos: servers ready ({time.monotonic() - started:.1f}s)", file=sys.stderr,
              flush=True)
        for i, spec in enumerate(specs):
            started = time.monotonic()
            on = shared if shared is not None and _plain(spec) else None
            rows.append(await run_scenario(spec, cluster, pace, seed + i, on))
            print(f"chaos: {spec.name} {'ok' if rows[-1].ok else 'FAILED'} "
                  f"({time.monotonic() - started:.1f}s)", file=sys.stderr, flush=True)
    finally:
        if shared is not None:
            await shared.down()
        await asyncio.to_thread(cluster.pg.stop)
    return rows


def cmd_chaos(args: argparse.Namespace) -> int:
    from gateway import logs

    logs.setup("WARNING")
    known = {s.name for s in SCENARIOS}
    unknown = [n for n in args.scenario if n not in known]
    if unknown:
        print(f"unknown scenario(s) {unknown}; known: {sorted(known)}", file=sys.stderr)
        return 2
    root = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rows = asyncio.run(run_all(args.scenario, args.short, root.resolve(), args.seed))
    print(render(rows))
    print(f"{len(rows)} scenarios in {time.monotonic() - started:.0f}s; "
          f"{sum(r.ok for r in rows)} ok")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(
            [dict(asdict(r), ok=r.ok) for r in rows], option=orjson.OPT_INDENT_2))
    ok = all(r.ok for r in rows)
    if ok and not args.data_dir:
        shutil.rmtree(root, ignore_errors=True)
    elif not ok:
        print(f"process logs kept in {root}", file=sys.stderr)
    return 0 if ok else 1


def add_commands(sub: Any) -> None:
    p = sub.add_parser("chaos", help="break Redis/PostgreSQL/gateway/writer under load; "
                                     "reconcile every acknowledged registration")
    p.add_argument("--short", action="store_true", help="a few second-long faults (test suite)")
    p.add_argument("--scenario", action="append", default=[], metavar="NAME",
                   help="run only this scenario (repeatable): "
                        + ", ".join(s.name for s in SCENARIOS))
    p.add_argument("--seed", type=int, default=6)
    p.add_argument("--data-dir", help="keep servers' data and process logs here")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    p.set_defaults(func=cmd_chaos)
