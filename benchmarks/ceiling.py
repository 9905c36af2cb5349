"""Sections 1, 4 and 6, and the HTTP half of the batching comparison.

* ceiling: the bare aiohttp + uvloop handler (parse, answer 202) against the real
  ``POST /v1/registrations`` (validation + idempotent append), same process count, same
  concurrency;
* round trips: ``EVALSHA`` calls (one per Redis round trip of the appender) per accepted
  registration, from Redis' own ``INFO commandstats``;
* scaling: 1 against 2 processes on one port (SO_REUSEPORT);
* batching over HTTP: the gateway against the same gateway with coalescing turned off
  (one ``EVALSHA`` per registration), and against a variant allowing two flushes in
  flight per shard (``variant_service.py``).

The services run side by side and the runs are interleaved (bare, gateway, uncoalesced,
two-in-flight, then the 1-process pair), ``repeats`` times, so every ratio compares runs made within
seconds of each other on the same noisy machine. Medians over the repeats are reported.
No writer runs here: intake alone is measured, and the stream it fills feeds the writer
benchmark (``drain.py``).
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.harness import Group, say
from benchmarks.session import Session, median, ratio

PREFIX_MAIN = "bench:gwmain:"  # the stream the writer benchmark drains
SCRIPT_COMMANDS = ("get", "set", "xadd")  # what append.lua calls inside EVALSHA


def _calls_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


def measure(session: Session, group: Group, label: str, processes: int, repeat: int,
            prefix: str | None) -> dict[str, Any]:
    stack = session.stack
    before = stack.command_calls()
    length_before = stack.stream_length(prefix) if prefix else 0
    run = session.load(group)
    row: dict[str, Any] = {"service": label, "processes": processes, "repeat": repeat,
                           "connections": session.config.connections, **run.summary()}
    if prefix is not None:
        # Entries the stream gained over the same window as the command counts (wrk's
        # own count misses the requests still in flight when it stops). The window
        # includes the group's warm-up run, at the same concurrency.
        time.sleep(0.3)
        calls = _calls_delta(before, stack.command_calls())
        appended = stack.stream_length(prefix) - length_before
        evalsha = calls.get("evalsha", 0) + calls.get("eval", 0)
        background = sum(v for k, v in calls.items()
                         if k not in SCRIPT_COMMANDS and k not in ("evalsha", "eval"))
        row["redis"] = {
            "evalsha_calls": evalsha,
            "appended": appended,
            "round_trips_per_accepted": round(evalsha / appended, 4) if appended else None,
            "mean_batch": round(appended / evalsha, 1) if evalsha else None,
            "other_commands": background,
            "commands": calls,
        }
    return row


def run(session: Session) -> dict[str, Any]:
    stack, cfg = session.stack, session.config
    db = stack.fresh_database("bench_ceiling")  # reference data for the gateways
    n = cfg.processes
    plan: list[tuple[str, int, Group, str | None]] = [
        ("bare", n, session.start_bare(n), None),
        ("gateway", n, session.start_gateway(n, PREFIX_MAIN, db), PREFIX_MAIN),
        ("uncoalesced", n, session.start_gateway(n, "bench:unco:", db, variant="uncoalesced"),
         "bench:unco:"),
        ("inflight2", n, session.start_gateway(n, "bench:infl:", db, variant="inflight2"),
         "bench:infl:"),
    ]
    if cfg.scaling and n != 1:
        plan += [("bare", 1, session.start_bare(1), None),
                 ("gateway", 1, session.start_gateway(1, "bench:gw1:", db), "bench:gw1:")]
    rows: list[dict[str, Any]] = []
    try:
        session.ready(*(group for _, _, group, _ in plan))
        for repeat in range(cfg.repeats):
            for label, processes, group, prefix in plan:
                say(f"ceiling  {label:<11} {processes}p  repeat {repeat + 1}")
                rows.append(measure(session, group, label, processes, repeat, prefix))
    finally:
        session.stop(*(group for _, _, group, _ in plan))
        stack.forget_prefix("bench:unco:")
        stack.forget_prefix("bench:infl:")
        stack.forget_prefix("bench:gw1:")
    return {"runs": rows, "summary": summarise(rows, n)}


def _median_of(rows: list[dict[str, Any]], label: str, processes: int, key: str) -> float | None:
    values = [r[key] for r in rows
              if r["service"] == label and r["processes"] == processes and r.get(key) is not None]
    return round(median(values), 3) if values else None


def _median_redis(rows: list[dict[str, Any]], label: str, processes: int,
                  key: str) -> float | None:
    values = [r["redis"][key] for r in rows
              if r["service"] == label and r["processes"] == processes
              and r.get("redis", {}).get(key) is not None]
    return round(median(values), 4) if values else None


def summarise(rows: list[dict[str, Any]], n: int) -> dict[str, Any]:
    services: dict[str, Any] = {}
    for label, processes in sorted({(r["service"], r["processes"]) for r in rows}):
        key = f"{label}_{processes}p"
        services[key] = {
            metric: _median_of(rows, label, processes, metric)
            for metric in ("accepted_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_answer",
                           "wrk_cores", "wrk_share_of_machine")
        }
        if label != "bare":
            services[key]["round_trips_per_accepted"] = _median_redis(
                rows, label, processes, "round_trips_per_accepted")
            services[key]["mean_batch"] = _median_redis(rows, label, processes, "mean_batch")
    # Ratios per repeat (runs seconds apart), then their median.
    def per_repeat(a: tuple[str, int], b: tuple[str, int],
                   key: str = "accepted_per_s") -> float | None:
        values = []
        for repeat in sorted({r["repeat"] for r in rows}):
            pick = {(r["service"], r["processes"]): r[key]
                    for r in rows if r["repeat"] == repeat}
            value = ratio(pick.get(a), pick.get(b))
            if value is not None:
                values.append(value)
        return round(median(values), 3) if values else None

    summary: dict[str, Any] = {
        "processes": n,
        "services": services,
        "gateway_vs_ceiling": per_repeat(("gateway", n), ("bare", n)),
        # CPU the servers spent per answer, bare / gateway: the throughput ratio the
        # machine would show if the servers had the cores to themselves (steadier than
        # throughput when other tenants take a varying share of the cores).
        "ceiling_vs_gateway_cpu_per_answer": per_repeat(
            ("bare", n), ("gateway", n), "server_cpu_us_per_answer"),
        "gateway_vs_ceiling_1p": per_repeat(("gateway", 1), ("bare", 1)),
        "coalesced_vs_uncoalesced": per_repeat(("gateway", n), ("uncoalesced", n)),
        "uncoalesced_vs_coalesced_cpu_per_answer": per_repeat(
            ("uncoalesced", n), ("gateway", n), "server_cpu_us_per_answer"),
        "inflight2_vs_coalesced": per_repeat(("inflight2", n), ("gateway", n)),
    }
    if n != 1:
        summary[f"scaling_bare_{n}p_vs_1p"] = per_repeat(("bare", n), ("bare", 1))
        summary[f"scaling_gateway_{n}p_vs_1p"] = per_repeat(("gateway", n), ("gateway", 1))
    return summary
