"""One benchmark session: its settings, its private servers, the services under test and
the load runs against them."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from benchmarks import harness
from benchmarks.bodies import Templates
from benchmarks.harness import Group, WrkRun
from benchmarks.stack import Stack
from gateway.devstack import free_port

RUN_SPACING = 1_000_000  # request numbers reserved per wrk run: no person is sent twice


@dataclass(frozen=True)
class BenchConfig:
    quick: bool
    duration_s: float
    warmup_s: float
    stall_duration_s: float
    connections: int
    sweep: tuple[int, ...]
    repeats: int
    stall_kinds: tuple[str, ...]
    wrk_threads: int
    redis_versions: tuple[str, ...]
    loop_seconds: float
    writer_configs: tuple[tuple[int, int], ...]  # (processes, batch)
    processes: int  # processes per service (SO_REUSEPORT)
    scaling: bool  # also run 1-process groups (1 vs N processes)
    drain_entries: int
    out_dir: Path
    data_dir: Path
    only: frozenset[str] = frozenset()

    def wants(self, section: str) -> bool:
        return not self.only or section in self.only


@dataclass
class Session:
    config: BenchConfig
    stack: Stack
    wrk: str
    templates: Templates
    log_dir: Path
    groups: list[Group] = field(default_factory=list)
    _runs: int = 0
    _warm: set[int] = field(default_factory=set)

    # -- services ---------------------------------------------------------------------
    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("GATEWAY_", "PG"))
               and k not in ("REDIS_URL", "DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR")}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def gateway_env(self, prefix: str, database_url: str, port: int = 0,
                    extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = self.base_env()
        env.update(
            REDIS_URL=self.stack.redis.url, DATABASE_URL=database_url,
            GATEWAY_KEY_PREFIX=prefix, GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(port),
            GATEWAY_WORKERS="1", GATEWAY_LOG_LEVEL="WARNING",
            # Nothing is in flight when the benchmark stops a service.
            GATEWAY_SHUTDOWN_GRACE_S="2",
        )
        env.update(extra or {})
        return env

    def _start(self, name: str, argv: list[str], count: int, port: int,
               env: Mapping[str, str], listen: bool = True) -> Group:
        """Spawn a group without waiting: start several, then :meth:`ready` them all."""
        group = harness.start_group(name, argv, count, port, env, self.log_dir, listen=listen)
        self.groups.append(group)
        return group

    def ready(self, *groups: Group) -> None:
        started = time.monotonic()
        harness.wait_ready(groups)
        names = ", ".join(g.name for g in groups)
        harness.say(f"ready    {names} ({time.monotonic() - started:.1f}s)")

    def start_bare(self, count: int) -> Group:
        port = free_port()
        argv = [sys.executable, "benchmarks/bare_service.py", "--port", str(port)]
        return self._start(f"bare-{count}p", argv, count, port, self.base_env())

    def start_gateway(self, count: int, prefix: str, database_url: str,
                      *, variant: str | None = None) -> Group:
        """The gateway, or with ``variant`` the gateway with another append strategy
        (``benchmarks/variant_service.py``)."""
        port = free_port()
        env = self.gateway_env(prefix, database_url, port)
        if variant is None:
            argv, name = [sys.executable, "-m", "gateway", "serve"], f"gateway-{count}p"
        else:
            argv = [sys.executable, "benchmarks/variant_service.py", "--variant", variant]
            name = f"{variant}-{count}p"
        return self._start(name, argv, count, port, self._metrics_mode(env, name, count))

    def _metrics_mode(self, env: dict[str, str], name: str, count: int) -> dict[str, str]:
        """N processes started one by one here run like ``gateway serve --workers N``
        (or ``writer --processes N``) does: prometheus_client in multiprocess mode,
        sharing one directory. One process keeps the single-process mode, as there."""
        if count > 1:
            path = self.config.data_dir / "metrics" / name
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(path)
        return env

    def start_naive(self, count: int, database_url: str, pool: int = 10) -> Group:
        port = free_port()
        env = self.base_env()
        env["DATABASE_URL"] = database_url
        argv = [sys.executable, "benchmarks/naive_service.py", "--port", str(port),
                "--pool", str(pool)]
        return self._start(f"naive-{count}p", argv, count, port, env)

    def start_writer(self, prefix: str, database_url: str, processes: int = 1,
                     batch: int | None = None) -> Group:
        extra = {"GATEWAY_WRITER_BATCH": str(batch)} if batch else {}
        env = self.gateway_env(prefix, database_url, extra=extra)
        argv = [sys.executable, "-m", "gateway", "writer"]
        name = f"writer-{processes}x{batch or 'default'}"
        return self._start(name, argv, processes, 0, self._metrics_mode(env, name, processes),
                           listen=False)

    def stop(self, *groups: Group) -> None:
        """SIGTERM every process of these groups at once, then wait for them."""
        harness.stop_groups(groups)
        for group in groups:
            if group in self.groups:
                self.groups.remove(group)

    def stop_all(self) -> None:
        self.stop(*self.groups)

    # -- load -------------------------------------------------------------------------
    def load(self, group: Group, *, connections: int | None = None,
             duration_s: float | None = None, during: Callable[[], None] | None = None,
             watch: Mapping[str, list[int]] | None = None) -> WrkRun:
        """A measured wrk run against ``group`` (warmed up once, on first use)."""
        cfg = self.config
        conns = connections or cfg.connections
        if id(group) not in self._warm and cfg.warmup_s > 0:
            self._warm.add(id(group))
            self._wrk(group, conns, cfg.warmup_s, None, {})
        targets: dict[str, list[int]] = {
            "server": group.pids,
            "redis": [self.stack.redis.pid] if self.stack.redis.pid else [],
            "postgres": self.stack.postgres_pids(),
        }
        targets.update(watch or {})
        return self._wrk(group, conns, duration_s or cfg.duration_s, during, targets)

    def reserve_people(self) -> int:
        """First request number of a fresh block of RUN_SPACING never-sent people."""
        self._runs += 1
        offset = self._runs * RUN_SPACING
        if offset + RUN_SPACING > self.templates.capacity:
            raise harness.BenchError("out of distinct people: write more templates")
        return offset

    def _wrk(self, group: Group, connections: int, duration_s: float,
             during: Callable[[], None] | None, watch: Mapping[str, list[int]]) -> WrkRun:
        offset = self.reserve_people()
        return harness.run_wrk(
            self.wrk, group.url, templates=self.templates.path, offset=offset,
            duration_s=duration_s, connections=connections, threads=self.config.wrk_threads,
            watch=watch, during=during,
        )

    def wait_drained(self, prefix: str, timeout_s: float = 120.0) -> float | None:
        """Seconds until the intake stream under ``prefix`` is empty (None: timed out)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.stack.stream_length(prefix) == 0:
                return round(time.monotonic() - started, 2)
            time.sleep(0.2)
        return None


class Sampler:
    """Samples a value every ``interval_s`` in a thread: (unix time, value) pairs."""

    def __init__(self, probe: Callable[[], Any], interval_s: float = 0.5) -> None:
        self.samples: list[tuple[float, Any]] = []
        self._probe, self._interval = probe, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a missed sample fails no benchmark
                self.samples.append((round(time.time(), 2), self._probe()))
            self._stop.wait(self._interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None

