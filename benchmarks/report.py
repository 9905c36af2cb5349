"""Results: the environment, the targets verdict, JSON + PNG chart + Markdown table."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.session import Session

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {
    "gateway_vs_ceiling": 0.75,  # gateway / bare aiohttp, 2 processes, same concurrency
    "round_trips_per_registration": 0.2,  # append round trips per accepted, at load (max)
    "gateway_vs_naive_at_equal_p99": 2.0,
    "stall_p99_vs_baseline": 1.5,  # "unchanged": within 1.5x of the unstalled p99 (max)
    "writer_vs_raw_copy": 0.75,
}


def environment(session: Session) -> dict[str, Any]:
    packages = {}
    for dist in ("aiohttp", "uvloop", "orjson", "redis", "hiredis", "asyncpg", "phonenumbers"):
        try:
            packages[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            packages[dist] = "absent"
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip()
                     for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    wrk_version = subprocess.run([session.wrk, "-v"], capture_output=True, text=True,
                                 check=False).stdout.splitlines()[:1]
    return {
        "python": platform.python_version(), "packages": packages,
        **session.stack.versions(),
        "wrk": wrk_version[0] if wrk_version else "", "cpu_model": model,
        "cores": os.cpu_count(), "load_average_at_start": os.getloadavg(),
        "git_commit": _git_commit(),
        "body_templates": session.templates.count,
        "mean_body_bytes": round(session.templates.mean_body_bytes, 1),
        "config": {k: (str(v) if isinstance(v, Path | frozenset) else v)
                   for k, v in vars(session.config).items()},
    }


def _git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    return done.stdout.strip()


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def targets(results: dict[str, Any]) -> dict[str, Any]:
    def verdict(measured: Any, target: float, higher_is_better: bool = True) -> dict[str, Any]:
        if measured is None:
            return {"target": target, "measured": None, "met": None}
        met = measured >= target if higher_is_better else measured <= target
        return {"target": target, "measured": measured, "met": met}

    n = _get(results, "ceiling", "summary", "processes") or 2
    stall_worst = None
    for kind in (_get(results, "naive", "summary", "stalls") or {}).values():
        value = (kind.get("gateway") or {}).get("p99_vs_baseline")
        if value is not None:
            stall_worst = value if stall_worst is None else max(stall_worst, value)
    return {
        "gateway_vs_ceiling": verdict(
            _get(results, "ceiling", "summary", "gateway_vs_ceiling"),
            TARGETS["gateway_vs_ceiling"]),
        "round_trips_per_registration": verdict(
            _get(results, "ceiling", "summary", "services", f"gateway_{n}p",
                 "round_trips_per_accepted"),
            TARGETS["round_trips_per_registration"], higher_is_better=False),
        "gateway_vs_naive_at_equal_p99": verdict(
            _get(results, "naive", "summary", "throughput_ratio_at_naive_p99"),
            TARGETS["gateway_vs_naive_at_equal_p99"]),
        "gateway_stall_p99_vs_baseline": verdict(
            stall_worst, TARGETS["stall_p99_vs_baseline"], higher_is_better=False),
        "writer_vs_raw_copy": verdict(
            _get(results, "drain", "summary", "writer_vs_raw_staged_bulk"),
            TARGETS["writer_vs_raw_copy"]),
    }


def write(results: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(results, indent=1, sort_keys=False, default=str) + "\n")
    md_path = out_dir / "summary.md"
    md_path.write_text(markdown_table(results) + "\n")
    paths = [json_path, md_path]
    try:
        from benchmarks.chart import draw
    except ImportError as exc:  # matplotlib missing: the JSON still stands
        print(f"bench: no chart ({exc}); install matplotlib (the `bench` extra)")
        return paths
    png_path = out_dir / "results.png"
    draw(results, png_path)
    paths.append(png_path)
    return paths


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown_table(results: dict[str, Any]) -> str:
    lines = ["| measurement | figure | target | met |", "|---|---|---|---|"]
    names = {
        "gateway_vs_ceiling": "gateway / bare aiohttp ceiling (same processes, accepted/s)",
        "round_trips_per_registration": "Redis round trips per accepted registration",
        "gateway_vs_naive_at_equal_p99": "gateway / naive INSERT-per-request, at equal p99",
        "gateway_stall_p99_vs_baseline": "gateway p99 during a PostgreSQL stall / unstalled",
        "writer_vs_raw_copy": "writer drain / raw staged COPY of the same rows",
    }
    for key, verdict in (results.get("targets") or {}).items():
        comparator = "≤" if key in ("round_trips_per_registration",
                                    "gateway_stall_p99_vs_baseline") else "≥"
        met = {True: "yes", False: "**no**", None: "not measured"}[verdict["met"]]
        lines.append(f"| {names.get(key, key)} | {_fmt(verdict['measured'], 3)} | "
                     f"{comparator} {verdict['target']} | {met} |")
    lines += ["", *_detail_rows(results)]
    return "\n".join(lines)


def _detail_rows(results: dict[str, Any]) -> list[str]:
    rows = ["| run | accepted/s | p50 ms | p99 ms | wrk CPU (cores) |", "|---|---|---|---|---|"]
    services = _get(results, "ceiling", "summary", "services") or {}
    names = {"bare": "bare aiohttp", "gateway": "gateway",
             "uncoalesced": "gateway without coalescing"}
    for key in sorted(services, key=lambda k: (list(names).index(k.rsplit("_", 1)[0]), k)):
        label, _, count = key.rpartition("_")
        s = services[key]
        label = f"{names[label]}, {count[:-1]} process{'es' if count != '1p' else ''}"
        if s:
            rows.append(f"| {label} | {_fmt(s['accepted_per_s'])} | {_fmt(s['p50_ms'], 1)} | "
                        f"{_fmt(s['p99_ms'], 1)} | {_fmt(s['wrk_cores'], 2)} |")
    naive = _get(results, "naive", "summary") or {}
    n = _get(results, "ceiling", "summary", "processes") or _get(
        results, "environment", "config", "processes")
    for key, label in (("naive", f"naive INSERT per request, {n} processes"),
                       ("gateway", f"gateway + writer, {n} processes")):
        s = naive.get(key)
        if s:
            rows.append(f"| {label} | {_fmt(s['accepted_per_s'])} | {_fmt(s['p50_ms'], 1)} | "
                        f"{_fmt(s['p99_ms'], 1)} | |")
    for kind, services_ in (naive.get("stalls") or {}).items():
        for service, s in services_.items():
            rows.append(f"| {service}, PostgreSQL {kind} stall | {_fmt(s['accepted_per_s'])} | "
                        f"{_fmt(s['p50_ms'], 1)} | {_fmt(s['p99_ms'], 1)} | |")
    drain = _get(results, "drain") or {}
    if "writers" in drain:
        rows += ["", "| writer / raw COPY | rows/s |", "|---|---|"]
        for w in drain["writers"]:
            rows.append(f"| writer, {w['processes']} process(es), batch {w['batch']} | "
                        f"{_fmt(w['rows_per_s'])} |")
        for mode, value in drain["raw_rows_per_s"].items():
            rows.append(f"| raw {mode.replace('_', ' ')} (one connection) | {_fmt(value)} |")
    return rows
