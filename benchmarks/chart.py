"""The results chart: one PNG, one panel per question the benchmark answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

NAIVE, GATEWAY, OTHER, CEILING = "#c0392b", "#2471a3", "#7f8c8d", "#27ae60"


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _processes(results: dict[str, Any]) -> int:
    return int(_get(results, "ceiling", "summary", "processes")
               or _get(results, "environment", "config", "processes") or 2)


def _empty(ax: Axes, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _bars(ax: Axes, labels: list[str], values: list[float], colors: list[str], title: str,
          unit: str) -> None:
    ax.barh(labels, values, color=colors)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(unit)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
    ax.margins(x=0.25)


def throughput(ax: Axes, results: dict[str, Any]) -> None:
    services = _get(results, "ceiling", "summary", "services") or {}
    naive = _get(results, "naive", "summary") or {}
    n = _processes(results)
    items = [
        (f"bare aiohttp {n}p", _get(services, f"bare_{n}p", "accepted_per_s"), CEILING),
        ("bare aiohttp 1p", _get(services, "bare_1p", "accepted_per_s") if n != 1 else None,
         CEILING),
        (f"gateway {n}p", _get(services, f"gateway_{n}p", "accepted_per_s"), GATEWAY),
        ("gateway 1p", _get(services, "gateway_1p", "accepted_per_s") if n != 1 else None,
         GATEWAY),
        (f"no coalescing {n}p", _get(services, f"uncoalesced_{n}p", "accepted_per_s"), OTHER),
        (f"2 flushes in flight {n}p", _get(services, f"inflight2_{n}p", "accepted_per_s"), OTHER),
        (f"gateway+writer {n}p", _get(naive, "gateway", "accepted_per_s"), GATEWAY),
        (f"naive INSERT {n}p", _get(naive, "naive", "accepted_per_s"), NAIVE),
    ]
    items = [i for i in items if i[1] is not None]
    if not items:
        return _empty(ax, "Accepted registrations/s")
    _bars(ax, [i[0] for i in items], [i[1] for i in items], [i[2] for i in items],
          "Accepted registrations/s (same concurrency)", "accepted/s")


def sweep(ax: Axes, results: dict[str, Any]) -> None:
    rows = _get(results, "naive", "sweep") or []
    if not rows:
        return _empty(ax, "Throughput vs p99")
    for service, color in (("naive", NAIVE), ("gateway", GATEWAY)):
        points = sorted(((r["p99_ms"], r["accepted_per_s"], r["connections"])
                         for r in rows if r["service"] == service and r["p99_ms"] is not None),
                        key=lambda p: p[2])  # along rising concurrency
        if not points:
            continue
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color=color,
                label="naive INSERT" if service == "naive" else "gateway + writer")
        for x, y, c in points:
            ax.annotate(f"c={c}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("p99 latency (ms, log)")
    ax.set_ylabel("accepted/s")
    n = _processes(results)
    ax.set_title(f"Throughput at a given p99 ({n} process{'es' if n != 1 else ''} each)",
                 fontsize=10)
    ax.legend(fontsize=8)


def stall(ax: Axes, results: dict[str, Any], kind: str) -> None:
    rows = [r for r in (_get(results, "naive", "stalls") or []) if r["stall"]["kind"] == kind]
    title = {"lock": "PostgreSQL table locked", "pause": "PostgreSQL paused (SIGSTOP)"}[kind]
    if not rows:
        return _empty(ax, title)
    for row in rows:
        color = NAIVE if row["service"] == "naive" else GATEWAY
        points = row["timeline"][1:-1]  # first and last seconds are partial
        ax.plot([p["t"] for p in points], [p.get("202", 0) for p in points], "o-", color=color,
                markersize=3, label=f"{row['service']}: p99 {row['p99_ms']:,.0f} ms")
        ax.axvspan(row["stall"]["start_s"], row["stall"]["end_s"], color=color, alpha=0.08)
    ax.set_title(f"{title}: 202s per second", fontsize=10)
    ax.set_xlabel("seconds into the run (shaded: stall)")
    ax.set_ylabel("accepted/s")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)


def drain(ax: Axes, results: dict[str, Any]) -> None:
    d = _get(results, "drain") or {}
    if "writers" not in d:
        return _empty(ax, "Writer vs raw COPY")
    labels, values, colors = [], [], []
    for w in d["writers"]:
        labels.append(f"writer {w['processes']}p batch {w['batch']}")
        values.append(w["rows_per_s"] or 0)
        colors.append(GATEWAY)
    for mode, value in d["raw_rows_per_s"].items():
        labels.append(f"raw {mode.replace('_', ' ')}")
        values.append(value)
        colors.append(CEILING)
    _bars(ax, labels, values, colors, "Rows stored per second", "rows/s")


def profile(ax: Axes, results: dict[str, Any]) -> None:
    p = _get(results, "profile") or {}
    us = p.get("us_per_request")
    if not us:
        return _empty(ax, "CPU per request")
    bare = _get(p, "bare", "us_per_request") or {}
    labels = [k for k in ("framework", "parse", "validate", "identity", "append", "metrics",
                          "other") if k in us or k in bare]
    ys = range(len(labels))
    ax.barh([y - 0.2 for y in ys], [us.get(k, 0) for k in labels], 0.4, color=GATEWAY,
            label=f"gateway ({p.get('cpu_us_per_request') or 0:,.0f} µs)")
    if bare:
        ax.barh([y + 0.2 for y in ys], [bare.get(k, 0) for k in labels], 0.4, color=CEILING,
                label=f"bare aiohttp ({_get(p, 'bare', 'cpu_us_per_request') or 0:,.0f} µs)")
    ax.set_yticks(list(ys))
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlabel("µs of CPU per request")
    ax.set_title("Where the CPU goes, one process (py-spy)", fontsize=10)
    ax.legend(fontsize=8)


def clients(ax: Axes, results: dict[str, Any]) -> None:
    found = [r for r in (_get(results, "clients", "results") or []) if "appended_per_s" in r]
    if not found:
        return _empty(ax, "redis-py append loop")
    modes = list(found[0]["appended_per_s"])
    width = 0.8 / len(found)
    for i, r in enumerate(found):
        xs = [m + i * width for m in range(len(modes))]
        ax.bar(xs, [r["appended_per_s"][m] for m in modes], width, label=r["label"])
    ax.set_xticks([m + 0.4 - width / 2 for m in range(len(modes))])
    ax.set_xticklabels([m.replace("_", "\n") for m in modes], fontsize=7)
    ax.set_ylabel("appended/s")
    ax.set_title("redis-py versions and batching (one process)", fontsize=10)
    ax.legend(fontsize=7)


def round_trips(ax: Axes, results: dict[str, Any]) -> None:
    services = _get(results, "ceiling", "summary", "services") or {}
    n = _processes(results)
    keys = [("gateway_1p", "gateway 1p")] if n != 1 else []
    keys += [(f"gateway_{n}p", f"gateway {n}p"), (f"inflight2_{n}p", f"2 in flight {n}p"),
             (f"uncoalesced_{n}p", f"no coalescing {n}p")]
    items = [(label, _get(services, key, "round_trips_per_accepted")) for key, label in keys]
    items = [i for i in items if i[1] is not None]
    if not items:
        return _empty(ax, "Redis round trips per registration")
    ax.barh([i[0] for i in items], [i[1] for i in items],
            color=[OTHER if "no coalescing" in i[0] else GATEWAY for i in items])
    ax.invert_yaxis()
    ax.axvline(0.2, color="black", linestyle="--", linewidth=1)
    for n, (_, v) in enumerate(items):
        ax.text(v, n, f" {v:.3f}", va="center", fontsize=8)
    ax.set_title("Redis round trips per accepted registration (target < 0.2)", fontsize=10)
    ax.margins(x=0.25)


def draw(results: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(2, 4, figsize=(22, 9.5))
    throughput(axes[0][0], results)
    sweep(axes[0][1], results)
    stall(axes[0][2], results, "lock")
    stall(axes[0][3], results, "pause")
    drain(axes[1][0], results)
    round_trips(axes[1][1], results)
    profile(axes[1][2], results)
    clients(axes[1][3], results)
    env = results.get("environment") or {}
    fig.suptitle(
        f"Intake gateway benchmarks — {env.get('cores', '?')} cores ({env.get('cpu_model', '')}),"
        f" shared machine; {results.get('started_at', '')}; commit {env.get('git_commit', '')}",
        fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=90)
    plt.close(fig)
