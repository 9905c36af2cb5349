"""Section 2: the naive design (INSERT in the request) against the gateway, at equal
concurrency, and while PostgreSQL stalls.

Both run the same number of processes on one port (2; 1 with ``--quick``). The gateway runs with its writer, so both designs
store every registration in PostgreSQL on the same 2 cores; the gateway's report also
says how far the writer kept up (rows stored per second, backlog left at the end).

Concurrency sweep: throughput and p99 at several connection counts give each design a
throughput-latency curve; "throughput at equal p99" is the gateway's throughput at the
naive design's p99 (at the main concurrency), read off the gateway's curve.

Stalls (on the private PostgreSQL only): ``lock`` holds ``LOCK TABLE registrations IN
ACCESS EXCLUSIVE MODE`` in an open transaction (a migration or a long VACUUM FULL);
``pause`` sends SIGSTOP to every PostgreSQL process (a frozen VM, a storage hiccup). The
stall starts a third of the way into the run and lasts a third of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from benchmarks import harness
from benchmarks.harness import Group, WrkRun, say
from benchmarks.session import Sampler, Session, ratio
from benchmarks.stack import run_async

PREFIX = "bench:e2e:"


def _hold_lock(url: str, seconds: float, marks: dict[str, float]) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE registrations IN ACCESS EXCLUSIVE MODE")
                marks["start"] = time.time()
                await asyncio.sleep(seconds)
            marks["end"] = time.time()
        finally:
            await conn.close()

    run_async(go)


def _pause(pids: list[int], seconds: float, marks: dict[str, float]) -> None:
    victims = [p for root in pids for p in harness.tree(root)]
    marks["start"] = time.time()
    try:
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        time.sleep(seconds)
    finally:
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        marks["end"] = time.time()


def stall(session: Session, kind: str, database_url: str,
          marks: dict[str, float]) -> Callable[[], None]:
    third = session.config.stall_duration_s / 3

    def during() -> None:
        time.sleep(third)
        if kind == "lock":
            _hold_lock(database_url, third, marks)
        else:
            _pause(session.stack.postgres_pids(), third, marks)

    return during


def timeline(run: WrkRun, origin: float) -> list[dict[str, Any]]:
    """Answers per second by status, seconds counted from ``origin`` (unix time)."""
    by_second: dict[int, dict[str, int]] = {}
    for key, count in run.report.get("timeline", {}).items():
        second, _, status = key.partition(":")
        bucket = by_second.setdefault(int(second), {})
        bucket[status] = bucket.get(status, 0) + int(count)
    if not by_second:
        return []
    # A second with no answer at all is a zero, not a gap.
    seconds = range(min(by_second), max(by_second) + 1)
    return [{"t": round(s - origin, 1), **by_second.get(s, {"202": 0})} for s in seconds]


def throughput_at_p99(points: list[tuple[float, float]], p99_ms: float) -> float | None:
    """Throughput on the (p99, throughput) curve at ``p99_ms``: linear in log(p99)
    between the two measured points around it; the best measured throughput when every
    point is faster; None when none is as fast."""
    points = sorted(points)
    if not points or p99_ms < points[0][0]:
        return None
    if p99_ms >= points[-1][0]:
        return max(t for _, t in points)
    for (p_lo, t_lo), (p_hi, t_hi) in itertools.pairwise(points):
        if p_lo <= p99_ms <= p_hi:
            if p_hi == p_lo:
                return max(t_lo, t_hi)
            share = (math.log(p99_ms) - math.log(p_lo)) / (math.log(p_hi) - math.log(p_lo))
            return t_lo + share * (t_hi - t_lo)
    return None


def _row(service: str, run: WrkRun, **extra: Any) -> dict[str, Any]:
    row = {"service": service, **run.summary(), **extra}
    # Everything this design burnt per accepted registration: HTTP processes, database,
    # Redis and (for the gateway) the writer, all on the same 2 cores.
    cores = sum(v for k, v in run.cpu.items()
                if k.endswith("_cores") and not k.startswith("machine"))
    accepted = run.accepted()
    row["all_cpu_us_per_accepted"] = (round(cores * run.duration_s / accepted * 1e6, 1)
                                      if accepted else None)
    return row


def run(session: Session) -> dict[str, Any]:
    stack, cfg = session.stack, session.config
    naive_db = stack.fresh_database("bench_naive")
    gateway_db = stack.fresh_database("bench_e2e")
    naive = session.start_naive(cfg.processes, naive_db)
    gateway = session.start_gateway(cfg.processes, PREFIX, gateway_db)
    writer = session.start_writer(PREFIX, gateway_db)
    try:
        session.ready(naive, gateway)
        sweep = [*_sweep(session, naive, gateway, writer, gateway_db)]
        stalls = [*_stalls(session, naive, gateway, writer, naive_db, gateway_db)]
    finally:
        session.stop(naive, gateway, writer)
        stack.forget_prefix(PREFIX)
    return {"sweep": sweep, "stalls": stalls, "summary": summarise(sweep, stalls, cfg.connections)}


def _sweep(session: Session, naive: Group, gateway: Group, writer: Group,
           gateway_db: str) -> list[dict[str, Any]]:
    rows = []
    for connections in session.config.sweep:
        say(f"naive    naive       c={connections}")
        rows.append(_row("naive", session.load(naive, connections=connections),
                         connections=connections))
        say(f"naive    gateway     c={connections}")
        rows.append(_gateway_run(session, gateway, writer, gateway_db, connections=connections)[0])
    return rows


def _gateway_run(session: Session, gateway: Group, writer: Group, gateway_db: str, *,
                 connections: int, during: Callable[[], None] | None = None,
                 duration_s: float | None = None) -> tuple[dict[str, Any], WrkRun]:
    stack = session.stack
    stored_before = stack.count_rows(gateway_db)
    with Sampler(lambda: stack.stream_length(PREFIX)) as backlog:
        run = session.load(gateway, connections=connections, during=during,
                           duration_s=duration_s, watch={"writer": writer.pids})
    stored = stack.count_rows(gateway_db) - stored_before
    left = stack.stream_length(PREFIX)
    drained_in = session.wait_drained(PREFIX)
    row = _row("gateway", run, connections=connections,
               stored_per_s_during_run=round(stored / run.duration_s, 1),
               backlog_at_end=left, drained_after_s=drained_in,
               backlog_peak=max((v for _, v in backlog.samples), default=0),
               backlog_samples=backlog.samples)
    return row, run


def _stalls(session: Session, naive: Group, gateway: Group, writer: Group, naive_db: str,
            gateway_db: str) -> list[dict[str, Any]]:
    cfg = session.config
    rows = []
    for kind in cfg.stall_kinds:
        for service in ("naive", "gateway"):
            say(f"stall    {service:<11} {kind} {cfg.stall_duration_s / 3:.0f}s")
            marks: dict[str, float] = {}
            started = time.time()
            if service == "naive":
                run = session.load(naive, duration_s=cfg.stall_duration_s,
                                   during=stall(session, kind, naive_db, marks))
                row = _row("naive", run, connections=cfg.connections)
            else:
                row, run = _gateway_run(session, gateway, writer, gateway_db,
                                        connections=cfg.connections,
                                        duration_s=cfg.stall_duration_s,
                                        during=stall(session, kind, gateway_db, marks))
                row["backlog_samples"] = [(round(t - started, 1), v)
                                          for t, v in row["backlog_samples"]]
            row["stall"] = {"kind": kind,
                            "start_s": round(marks.get("start", started) - started, 2),
                            "end_s": round(marks.get("end", started) - started, 2)}
            row["timeline"] = timeline(run, started)
            rows.append(row)
    return rows


def summarise(sweep: list[dict[str, Any]], stalls: list[dict[str, Any]],
              connections: int) -> dict[str, Any]:
    def at(service: str) -> dict[str, Any] | None:
        return next((r for r in sweep if r["service"] == service
                     and r["connections"] == connections), None)

    naive, gateway = at("naive"), at("gateway")
    equal_p99 = measured_only = None
    if naive is not None and naive["p99_ms"] is not None:
        curve = [(r["p99_ms"], r["accepted_per_s"]) for r in sweep
                 if r["service"] == "gateway" and r["p99_ms"] is not None]
        equal_p99 = ratio(throughput_at_p99(curve, naive["p99_ms"]), naive["accepted_per_s"])
        fits = [t for p, t in curve if p <= naive["p99_ms"]]
        measured_only = ratio(max(fits), naive["accepted_per_s"]) if fits else None
    out: dict[str, Any] = {
        "connections": connections,
        "naive": _brief(naive), "gateway": _brief(gateway),
        "throughput_ratio_equal_concurrency": ratio(
            gateway["accepted_per_s"] if gateway else None,
            naive["accepted_per_s"] if naive else None),
        # Gateway throughput at the naive design's p99 (interpolated on the gateway's
        # curve), and the same using measured points only (no interpolation).
        "throughput_ratio_at_naive_p99": equal_p99,
        "throughput_ratio_at_naive_p99_measured_points": measured_only,
        "naive_vs_gateway_cpu_per_accepted": ratio(
            naive["all_cpu_us_per_accepted"] if naive else None,
            gateway["all_cpu_us_per_accepted"] if gateway else None),
        "stalls": {},
    }
    baseline = {"naive": naive, "gateway": gateway}
    for row in stalls:
        base = baseline.get(row["service"])
        non_accepted = sum(int(v) for k, v in row["statuses"].items() if k != "202")
        out["stalls"].setdefault(row["stall"]["kind"], {})[row["service"]] = {
            **(_brief(row) or {}),
            "p99_vs_baseline": ratio(row["p99_ms"], base["p99_ms"] if base else None),
            "non_202_answers": non_accepted,
            "socket_errors": row["socket_errors"],
            "min_accepted_in_a_second": min(
                (int(t.get("202", 0)) for t in row["timeline"][1:-1]), default=None),
        }
    return out


def _brief(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    keys = ("accepted_per_s", "p50_ms", "p99_ms", "max_ms", "all_cpu_us_per_accepted",
            "stored_per_s_during_run", "backlog_at_end", "drained_after_s")
    return {k: row[k] for k in keys if k in row}
