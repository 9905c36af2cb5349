"""Results: the environment, the targets verdict, JSON + PNG chart + Markdown table."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.session import Session, median

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {
    "gateway_vs_ceiling": 0.75,  # gateway / bare aiohttp, 2 processes, same concurrency
    "round_trips_per_registration": 0.2,  # append round trips per accepted, at load (max)
    "gateway_vs_naive_at_equal_p99": 2.0,
    "stall_p99_vs_baseline": 1.5,  # "unchanged": within 1.5x of the unstalled p99 (max)
    "writer_vs_raw_copy": 0.75,
}


TARGET_NAMES = {
    "gateway_vs_ceiling": "gateway / bare aiohttp ceiling (same processes, accepted/s)",
    "round_trips_per_registration": "Redis round trips per accepted registration",
    "gateway_vs_naive_at_equal_p99": "gateway / naive INSERT-per-request, at equal p99",
    "gateway_stall_p99_vs_baseline": "gateway p99 during a PostgreSQL stall / unstalled",
    "writer_vs_raw_copy": "writer drain / raw staged COPY of the same rows",
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
    """results.json, summary.md, results.png; a full run also keeps its JSON under
    runs/ so that the summary can show how much the figures move from run to run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=1, sort_keys=False, default=str) + "\n"
    json_path = out_dir / "results.json"
    json_path.write_text(text)
    paths = [json_path]
    history: list[dict[str, Any]] = []
    if not results.get("quick") and not results.get("partial"):
        runs = out_dir / "runs"
        runs.mkdir(exist_ok=True)
        kept = runs / f"{results['started_at'].replace(':', '')}.json"
        kept.write_text(text)
        paths.append(kept)
        history = [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]
    md_path = out_dir / "summary.md"
    md_path.write_text(markdown_table(results) + "\n" + "\n".join(spread_rows(history)) + "\n")
    paths.append(md_path)
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
    names = TARGET_NAMES
    for key, verdict in (results.get("targets") or {}).items():
        comparator = "≤" if key in ("round_trips_per_registration",
                                    "gateway_stall_p99_vs_baseline") else "≥"
        met = {True: "yes", False: "**no**", None: "not measured"}[verdict["met"]]
        lines.append(f"| {names.get(key, key)} | {_fmt(verdict['measured'], 3)} | "
                     f"{comparator} {verdict['target']} | {met} |")
    lines += ["", *_detail_rows(results)]
    return "\n".join(lines)


def spread_rows(history: list[dict[str, Any]]) -> list[str]:
    """Each target's figure over every full run kept in runs/ (a shared, noisy machine)."""
    if len(history) < 2:
        return []
    rows = [f"Over the {len(history)} full runs kept in `results/runs/`:", "",
            *_header("measurement", "lowest", "median", "highest", "runs meeting the target")]
    for key, name in TARGET_NAMES.items():
        values = [v for v in (((h.get("targets") or {}).get(key) or {}).get("measured")
                              for h in history) if v is not None]
        met = sum(1 for h in history if ((h.get("targets") or {}).get(key) or {}).get("met"))
        if values:
            rows.append(_row(name, _fmt(min(values), 3), _fmt(median(values), 3),
                             _fmt(max(values), 3), f"{met} of {len(values)}"))
    return rows


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _header(*names: str) -> list[str]:
    return [_row(*names), _row(*(["---"] * len(names)))]


def _detail_rows(results: dict[str, Any]) -> list[str]:
    rows: list[str] = []
    for part in (_http_rows, _naive_rows, _drain_rows, _client_rows, _profile_rows, _hot_rows):
        found = part(results)
        if found:
            rows += [*found, ""]
    return rows


def _http_rows(results: dict[str, Any]) -> list[str]:
    services = _get(results, "ceiling", "summary", "services") or {}
    if not services:
        return []
    rows = _header("HTTP, same concurrency", "accepted/s", "p50 ms", "p99 ms",
                   "server CPU µs/answer", "Redis round trips/registration",
                   "wrk CPU (cores)")
    names = {"bare": "bare aiohttp + uvloop", "gateway": "gateway",
             "uncoalesced": "gateway, one EVALSHA per registration",
             "inflight2": "gateway, two flushes in flight"}
    for key in sorted(services, key=lambda k: (list(names).index(k.rsplit("_", 1)[0]), k)):
        label, _, count = key.rpartition("_")
        s = services[key]
        rows.append(_row(
            f"{names[label]}, {count[:-1]} process{'es' if count != '1p' else ''}",
            _fmt(s["accepted_per_s"]), _fmt(s["p50_ms"], 1), _fmt(s["p99_ms"], 1),
            _fmt(s.get("server_cpu_us_per_answer")), _fmt(s.get("round_trips_per_accepted"), 3),
            _fmt(s["wrk_cores"], 2)))
    return rows


def _naive_rows(results: dict[str, Any]) -> list[str]:
    naive = _get(results, "naive") or {}
    if "sweep" not in naive:
        return []
    rows = _header("design", "connections", "accepted/s", "p50 ms", "p99 ms",
                   "CPU µs/registration, all processes", "answers other than 202")
    label = {"naive": "naive INSERT per request", "gateway": "gateway + writer"}
    for r in [*naive["sweep"], *naive.get("stalls", [])]:
        stall = r.get("stall")
        name = label[r["service"]] + (f", PostgreSQL {stall['kind']} for "
                                      f"{stall['end_s'] - stall['start_s']:.0f} s" if stall else "")
        other = sum(int(v) for k, v in r["statuses"].items() if k != "202")
        other += sum(int(v) for v in r["socket_errors"].values())
        rows.append(_row(name, r["connections"], _fmt(r["accepted_per_s"]), _fmt(r["p50_ms"], 1),
                         _fmt(r["p99_ms"], 1), _fmt(r.get("all_cpu_us_per_accepted")), other))
    return rows


def _drain_rows(results: dict[str, Any]) -> list[str]:
    drain = _get(results, "drain") or {}
    if "writers" not in drain:
        return []
    rows = _header("into PostgreSQL", "rows/s", "writer CPU (cores)", "PostgreSQL CPU (cores)")
    for w in drain["writers"]:
        rows.append(_row(f"writer, {w['processes']} process{'es' if w['processes'] > 1 else ''}, "
                         f"batch {w['batch']}", _fmt(w["rows_per_s"]),
                         _fmt(w["cpu"].get("writer_cores"), 2),
                         _fmt(w["cpu"].get("postgres_cores"), 2)))
    for mode, value in drain["raw_rows_per_s"].items():
        rows.append(_row(f"raw {mode.replace('_', ' ')}, one connection", _fmt(value), "", ""))
    return rows


def _client_rows(results: dict[str, Any]) -> list[str]:
    found = [r for r in (_get(results, "clients", "results") or []) if "appended_per_s" in r]
    if not found:
        return []
    modes = list(found[0]["appended_per_s"])
    rows = _header("redis-py append loop, appended/s", *modes)
    for r in found:
        rows.append(_row(r["label"], *(_fmt(r["appended_per_s"][m]) for m in modes)))
    return rows


def _profile_rows(results: dict[str, Any]) -> list[str]:
    gateway = _get(results, "profile", "us_per_request")
    if not gateway:
        return []
    bare = _get(results, "profile", "bare", "us_per_request") or {}
    rows = _header("CPU per request (py-spy), µs", "gateway", "bare aiohttp")
    for key in ("framework", "parse", "validate", "identity", "append", "metrics", "other"):
        rows.append(_row(key, _fmt(gateway.get(key)), _fmt(bare.get(key)) if bare else ""))
    rows.append(_row("**total**", _fmt(_get(results, "profile", "cpu_us_per_request")),
                     _fmt(_get(results, "profile", "bare", "cpu_us_per_request"))))
    return rows


def _hot_rows(results: dict[str, Any]) -> list[str]:
    hot = _get(results, "hotpath") or {}
    if "new_token_us" not in hot:
        return []
    rows = _header("per-request piece (µs per call, best of 5 loops)", "now", "proposed")
    pairs = (
        ("registration token", hot["new_token_us"], "now", "one_urandom_read"),
        ("keyed hashes (identity, phone)", hot["keyed_hashes_us"], "now", "copied_hmac"),
        ("payload + fingerprint", hot["payload_and_fingerprint_us"], "to_payload_twice",
         "to_payload_once"),
        ("body read timeout", hot["body_timeout_us"], "with_asyncio_timeout", "without"),
        ("metrics, single-process mode", hot["metrics_us"]["single_process"],
         "labels_per_request", "cached_children"),
        ("metrics, multiprocess mode", hot["metrics_us"]["multiprocess"],
         "labels_per_request", "cached_children"),
    )
    for name, values, now, proposed in pairs:
        rows.append(_row(name, _fmt(values[now], 1), _fmt(values[proposed], 1)))
    rows.append(_row("validate() (for scale)", _fmt(hot["validate_us"], 1), ""))
    return rows
