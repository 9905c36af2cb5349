"""Sections 1, 4 and 6, and the HTTP half of the batching comparison.

* ceiling: the bare aiohttp + uvloop handler (parse, answer 202) against the real
  ``POST /v1/registrations`` (validation + idempotent append), same process count, same
  concurrency;
* round trips: ``EVALSHA`` calls (one per Redis round trip of the appender) per accepted
  registration, from Redis' own ``INFO commandstats``;
* scaling: 1 against 2 processes on one port (SO_REUSEPORT);
* batching over HTTP: the gateway against the same gateway with coalescing turned off
  (one ``EVALSHA`` per registration).

The services run side by side and the runs are interleaved (bare, gateway, uncoalesced,
then the 1-process pair), ``repeats`` times, so every ratio compares runs made within
seconds of each other on the same noisy machine. Medians over the repeats are reported.
No writer runs here: intake alone is measured, and the stream it fills feeds the writer
benchmark (``drain.py``).
"""

from __future__ import annotations

from typing import Any

from benchmarks.harness import Group
from benchmarks.session import Session, median, ratio

PREFIX_2P = "bench:gw2:"  # the stream the writer benchmark drains
SCRIPT_COMMANDS = ("get", "set", "xadd")  # what append.lua calls inside EVALSHA


def _calls_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


def measure(session: Session, group: Group, label: str, processes: int,
            repeat: int) -> dict[str, Any]:
    before = session.stack.command_calls()
    run = session.load(group)
    calls = _calls_delta(before, session.stack.command_calls())
    row: dict[str, Any] = {"service": label, "processes": processes, "repeat": repeat,
                           "connections": session.config.connections, **run.summary()}
    accepted = run.accepted()
    if label != "bare":
        evalsha = calls.get("evalsha", 0) + calls.get("eval", 0)
        background = sum(v for k, v in calls.items()
                         if k not in SCRIPT_COMMANDS and k not in ("evalsha", "eval"))
        row["redis"] = {
            "evalsha_calls": evalsha,
            "round_trips_per_accepted": round(evalsha / accepted, 4) if accepted else None,
            "mean_batch": round(accepted / evalsha, 1) if evalsha else None,
            "other_commands": background,
            "commands": calls,
        }
    return row


def run(session: Session) -> dict[str, Any]:
    stack, cfg = session.stack, session.config
    db = stack.fresh_database("bench_ceiling")  # reference data for the gateways
    plan: list[tuple[str, int, Group]] = [
        ("bare", 2, session.start_bare(2)),
        ("gateway", 2, session.start_gateway(2, PREFIX_2P, db)),
        ("uncoalesced", 2, session.start_gateway(2, "bench:unco2:", db, coalesced=False)),
        ("bare", 1, session.start_bare(1)),
        ("gateway", 1, session.start_gateway(1, "bench:gw1:", db)),
    ]
    rows: list[dict[str, Any]] = []
    try:
        for repeat in range(cfg.repeats):
            for label, processes, group in plan:
                print(f"bench: ceiling  {label:<11} {processes}p  repeat {repeat + 1}", flush=True)
                rows.append(measure(session, group, label, processes, repeat))
    finally:
        for _, _, group in plan:
            session.stop(group)
        stack.forget_prefix("bench:unco2:")
        stack.forget_prefix("bench:gw1:")
    return {"runs": rows, "summary": summarise(rows)}


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


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    services: dict[str, Any] = {}
    for label, processes in (("bare", 1), ("bare", 2), ("gateway", 1), ("gateway", 2),
                             ("uncoalesced", 2)):
        key = f"{label}_{processes}p"
        services[key] = {
            metric: _median_of(rows, label, processes, metric)
            for metric in ("accepted_per_s", "p50_ms", "p99_ms", "wrk_cores",
                           "wrk_share_of_machine")
        }
        if label != "bare":
            services[key]["round_trips_per_accepted"] = _median_redis(
                rows, label, processes, "round_trips_per_accepted")
            services[key]["mean_batch"] = _median_redis(rows, label, processes, "mean_batch")
    # Ratios per repeat (runs seconds apart), then their median.
    def per_repeat(a: tuple[str, int], b: tuple[str, int]) -> float | None:
        values = []
        for repeat in sorted({r["repeat"] for r in rows}):
            pick = {(r["service"], r["processes"]): r["accepted_per_s"]
                    for r in rows if r["repeat"] == repeat}
            value = ratio(pick.get(a), pick.get(b))
            if value is not None:
                values.append(value)
        return round(median(values), 3) if values else None

    return {
        "services": services,
        "gateway_vs_ceiling_2p": per_repeat(("gateway", 2), ("bare", 2)),
        "gateway_vs_ceiling_1p": per_repeat(("gateway", 1), ("bare", 1)),
        "coalesced_vs_uncoalesced_2p": per_repeat(("gateway", 2), ("uncoalesced", 2)),
        "scaling_bare_2p_vs_1p": per_repeat(("bare", 2), ("bare", 1)),
        "scaling_gateway_2p_vs_1p": per_repeat(("gateway", 2), ("gateway", 1)),
    }
