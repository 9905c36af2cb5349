"""The capacity report of one run: ``capacity.md`` with the verdict, the figures and the
plots (drawn by :mod:`loadtests.plots`), and ``capacity.json``, whose figures the
``gateway capacity`` calculator reads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.figures import Figures

MB = 1024 * 1024


@dataclass(frozen=True)
class Check:
    name: str
    objective: str
    measured: str
    passed: bool


def verdict(
    figures: Figures, reconciliation: dict[str, Any], objectives: dict[str, float]
) -> list[Check]:
    return [
        Check(
            "p99 latency",
            f"<= {objectives['p99_ms']:.0f} ms",
            f"{figures.p99_ms:.0f} ms",
            figures.p99_ms <= objectives["p99_ms"],
        ),
        Check(
            "server-error rate",
            f"<= {objectives['max_error_rate']:.2%}",
            f"{figures.error_rate:.3%}",
            figures.error_rate <= objectives["max_error_rate"],
        ),
        Check(
            "unexpected answers",
            f"<= {objectives['max_unexpected_rate']:.2%}",
            f"{figures.unexpected_rate:.3%}",
            figures.unexpected_rate <= objectives["max_unexpected_rate"],
        ),
        Check(
            "lost",
            f"= {objectives['max_lost']:.0f}",
            str(reconciliation.get("lost", "?")),
            reconciliation.get("lost", 1) <= objectives["max_lost"],
        ),
        Check(
            "duplicated",
            f"= {objectives['max_duplicated']:.0f}",
            str(reconciliation.get("duplicated", "?")),
            reconciliation.get("duplicated", 1) <= objectives["max_duplicated"],
        ),
        Check(
            "misattributed",
            "= 0",
            str(reconciliation.get("misattributed", "?")),
            reconciliation.get("misattributed", 1) == 0,
        ),
    ]


def breakpoint_checks(checks: list[Check], breakpoint: dict[str, Any] | None) -> list[Check]:
    """A breakpoint run is meant to break the latency and error objectives: it passes
    when it measured a capacity (a step within them) and lost and duplicated nothing."""
    step = (breakpoint or {}).get("capacity_step")
    kept = [c for c in checks if c.name not in ("p99 latency", "server-error rate")]
    measured = f"{step['rps']:,.0f} requests/s at {step['users']} users" if step else "none"
    return [
        Check("capacity measured", "a step within the objectives", measured, step is not None),
        *kept,
    ]


def _n(value: float | None, unit: str = "", digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _figure_rows(f: Figures, breakpoint: dict[str, Any] | None) -> list[tuple[str, str]]:
    rows = [
        (
            "sustainable registrations/s at the objective",
            (
                f"{_n(f.sustainable_registrations_per_s)}"
                f" (requests/s {_n(f.sustainable_requests_per_s)})"
            ),
        )
    ]
    if breakpoint is not None:
        step = breakpoint.get("capacity_step")
        rows.append(
            (
                "breakpoint: last step within the objectives",
                f"{step['users']} users, {step['rps']:,.0f} requests/s, p99 {step['p99_ms']:.0f} ms"
                if step
                else "none: the first step already broke",
            )
        )
    rows += [
        ("peak backlog", f"{f.peak_backlog:,} entries"),
        ("drain rate", f"{_n(f.drain_rate_per_s)} rows/s ({f.drain_rate_source})"),
        ("time to drain after the load stopped", _n(f.time_to_drain_s, " s", 1)),
        ("time to drain the peak backlog (to 2 %)", _n(f.peak_backlog_drained_in_s, " s", 1)),
        ("Redis memory per queued registration (stream entry)", _n(f.stream_bytes_per_entry, " B")),
        (
            "Redis memory per accepted person (dedupe key, kept for the dedupe TTL)",
            _n(f.dedupe_bytes_per_person, " B"),
        ),
        ("Redis peak used_memory", _n(f.redis_peak_used_memory / MB, " MiB", 1)),
        ("p50 / p99 latency, whole run", f"{f.p50_ms:.0f} / {f.p99_ms:.0f} ms"),
        ("shed (503/429)", f"{f.shed_rate:.3%}"),
        ("clients that gave up waiting (by choice)", f"{f.gave_up:,}"),
    ]
    rows.append(("CPU per unit: method", f.cpu_method or "n/a"))
    rows += [
        (f"CPU per request, {k}", f"{v * 1e6:,.0f} µs") for k, v in f.cpu_s_per_request.items()
    ]
    rows += [(f"CPU per row, {k}", f"{v * 1e6:,.0f} µs") for k, v in f.cpu_s_per_row.items()]
    share = f.load_generator_cpu_share
    rows.append(
        ("load generator's share of the CPU used", _n(share * 100 if share else None, " %"))
    )
    return rows


def _reconciliation_text(rec: dict[str, Any]) -> str:
    def n(key: str) -> str:
        value = rec.get(key)
        return f"{value:,}" if isinstance(value, int) else "?"

    return (
        f"{n('accepted_ids')} registration ids answered 202/200 ({n('accepted_answers')} answers,"
        f" {n('people_accepted')} people): {n('stored')} stored, {n('dead_lettered')}"
        f" dead-lettered, **{n('lost')} lost**, **{n('duplicated')} duplicated**,"
        f" {n('misattributed')} misattributed. Rows stored during the run: {n('rows_in_run')},"
        f" of which {n('rows_never_answered')} were never answered to their client (it gave up"
        " or was stopped, and did not resubmit). Dead letters of the run by reason: "
        + (
            ", ".join(f"{k}: {v}" for k, v in rec.get("run_dead_letter_reasons", {}).items())
            or "none"
        )
        + "."
    )


def markdown(
    meta: dict[str, Any],
    f: Figures,
    rec: dict[str, Any],
    checks: list[Check],
    plots: list[str],
    breakpoint: dict[str, Any] | None,
) -> str:
    ok = all(c.passed for c in checks)
    summary = (
        f"**Verdict: {'PASS' if ok else 'FAIL'}** — {f.requests:,} requests,"
        f" {f.accepted:,} registrations accepted, lost {rec.get('lost', '?')},"
        f" duplicated {rec.get('duplicated', '?')}."
    )
    setting = f"Stack: {meta['stack']}. Load: {meta['load']}. Machine: {meta['machine']}."
    lines = [
        f"# Capacity report: {meta['shape']} ({meta['started']})",
        "",
        summary,
        "",
        setting,
        "",
    ]
    lines += _table(
        ("objective", "target", "measured", ""),
        [(c.name, c.objective, c.measured, "ok" if c.passed else "**FAIL**") for c in checks],
    )
    lines += ["", "## Capacity figures", ""]
    lines += _table(("figure", "value"), _figure_rows(f, breakpoint))
    lines += ["", "## Reconciliation", "", _reconciliation_text(rec), ""]
    lines += ["## Answers by submission kind", ""]
    statuses = sorted({s for counts in f.by_kind.values() for s in counts}, key=int)
    lines += _table(
        ("kind", *statuses),
        [(k, *(f"{v.get(s, 0):,}" for s in statuses)) for k, v in f.by_kind.items()],
    )
    lines += ["", "## Over time", ""]
    lines += [f"![{name}]({name})" for name in plots] or [
        "(the plots could not be drawn: see the run's output)"
    ]
    if breakpoint is not None:
        lines += ["", "## Breakpoint steps", ""]
        lines += _table(
            ("step", "users", "requests/s", "p50 ms", "p99 ms", "errors", "Locust CPU", ""),
            [
                (
                    str(st["index"]),
                    str(st["users"]),
                    f"{st['rps']:,.0f}",
                    f"{st['p50_ms']:.0f}",
                    f"{st['p99_ms']:.0f}",
                    f"{st['error_rate']:.2%}",
                    f"{st['generator_cpu']:.0f} %",
                    "ok" if st["ok"] else "; ".join(st["broke"]),
                )
                for st in breakpoint.get("steps", [])
            ],
        )
    lines += [
        "",
        (
            "Files: `answers-*.jsonl` (every answer), `samples.csv` (once a second), `locust_*.csv`"
            " and `locust.html` (Locust's own statistics), `reconciliation.json`, `capacity.json`."
        ),
        "",
    ]
    return "\n".join(lines)


def write(
    run_dir: Path,
    meta: dict[str, Any],
    f: Figures,
    rec: dict[str, Any],
    checks: list[Check],
    plots: list[str],
    breakpoint: dict[str, Any] | None,
) -> Path:
    path = run_dir / "capacity.md"
    path.write_text(markdown(meta, f, rec, checks, plots, breakpoint), encoding="utf-8")
    capacity = {
        "meta": meta,
        "figures": f.as_dict(),
        "reconciliation": rec,
        "verdict": [c.__dict__ for c in checks],
        "passed": all(c.passed for c in checks),
        "breakpoint": breakpoint,
    }
    (run_dir / "capacity.json").write_text(json.dumps(capacity, indent=1, default=str) + "\n")
    return path
