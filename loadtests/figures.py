"""The capacity figures of one run, computed from its answers and samples (pure Python).

Definitions, so that two runs are compared on the same terms:

* **sustainable registrations/s at the objective**: the highest rate of 202 answers over
  any 10-second window whose p99 latency and server-error rate met the objectives (for a
  breakpoint run, the rate of the last step that met them).
* **peak backlog**: the largest sampled stream length (entries not yet committed).
* **drain rate**: from the peak backlog (at least 1,000 entries) down to 2 % of it, the
  entries that left the stream plus the registrations accepted meanwhile, per second: the
  writers flat out. When no backlog ever formed, the best 5-second commit rate (a lower
  bound: the writers kept up).
* **time to drain**: from the last answer to the first sample with an empty backlog; and
  from the peak backlog down to 2 % of it (under load a few entries are always in flight).
* **Redis memory per queued registration**: ``MEMORY USAGE`` of the streams divided by
  their length, at samples holding at least 100 entries (median); plus the dedupe key
  that each accepted person keeps for the dedupe TTL.
* **CPU per unit**: see :mod:`loadtests.costs`.
"""

from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtests import costs
from loadtests.answers import Answer
from loadtests.plan import Objectives, percentile

WINDOW_S = 10
MIN_DRAIN_BACKLOG = 1000  # below this, a drain is over within a sample or two


@dataclass
class Series:
    """Per-second series from the answers, indexed from ``t0`` (epoch seconds)."""

    t0: float
    seconds: int
    accepted: list[int]
    answered: list[int]
    errors: list[int]
    shed: list[int]
    latency: list[dict[int, int]]  # per second: {ms: count} of answered requests


def series(answers: Iterable[Answer], t0: float | None = None) -> Series:
    rows = list(answers)
    start = t0 if t0 is not None else min((a.t for a in rows), default=0.0)
    end = max((a.t + a.ms / 1000 for a in rows), default=start)
    n = max(int(end - start) + 1, 1)
    s = Series(start, n, [0] * n, [0] * n, [0] * n, [0] * n, [defaultdict(int) for _ in range(n)])
    for a in rows:
        i = min(max(int(a.t + a.ms / 1000 - start), 0), n - 1)
        s.answered[i] += 1
        if a.s == 202:
            s.accepted[i] += 1
        if a.s in (429, 503):
            s.shed[i] += 1
        if a.server_error:
            s.errors[i] += 1
        if a.s != 0 or a.server_error:
            s.latency[i][int(a.ms)] += 1
    return s


def _merge(hists: Sequence[dict[int, int]]) -> dict[int, int]:
    merged: dict[int, int] = defaultdict(int)
    for h in hists:
        for k, v in h.items():
            merged[k] += v
    return merged


def rolling_percentiles(s: Series, width: int = 5) -> tuple[list[float], list[float]]:
    p50, p99 = [], []
    for i in range(s.seconds):
        hist = _merge(s.latency[max(0, i - width + 1) : i + 1])
        p50.append(percentile(hist, 0.5) if hist else math.nan)
        p99.append(percentile(hist, 0.99) if hist else math.nan)
    return p50, p99


def sustainable_rate(s: Series, objectives: Objectives) -> tuple[float, float]:
    """(registrations/s, requests/s) of the best 10 s window that met the objectives."""
    best = (0.0, 0.0)
    for i in range(max(s.seconds - WINDOW_S + 1, 1)):
        j = min(i + WINDOW_S, s.seconds)
        answered = sum(s.answered[i:j])
        if answered == 0:
            continue
        p99 = percentile(_merge(s.latency[i:j]), 0.99)
        if p99 > objectives.p99_ms or sum(s.errors[i:j]) / answered > objectives.max_error_rate:
            continue
        rate = sum(s.accepted[i:j]) / (j - i)
        if rate > best[0]:
            best = (rate, answered / (j - i))
    return best


def read_samples(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return [{k: float(v or 0) for k, v in row.items()} for row in csv.DictReader(handle)]


@dataclass
class Figures:
    requests: int = 0
    accepted: int = 0
    load_seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    error_rate: float = 0.0
    shed_rate: float = 0.0
    unexpected_rate: float = 0.0
    gave_up: int = 0
    sustainable_registrations_per_s: float = 0.0
    sustainable_requests_per_s: float = 0.0
    peak_backlog: int = 0
    drain_rate_per_s: float = 0.0
    drain_rate_source: str = ""
    time_to_drain_s: float | None = None  # after the last answer
    peak_backlog_drained_in_s: float | None = None  # down to 2 % of the peak
    stream_bytes_per_entry: float | None = None
    dedupe_bytes_per_person: float | None = None
    redis_peak_used_memory: int = 0
    cpu_s_per_request: dict[str, float] = field(default_factory=dict)
    cpu_s_per_row: dict[str, float] = field(default_factory=dict)
    cpu_method: str = ""
    load_generator_cpu_share: float | None = None
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute(
    answers: Sequence[Answer],
    samples: Sequence[dict[str, float]],
    objectives: Objectives,
    *,
    dedupe_bytes: float | None = None,
    unexpected: int = 0,
) -> Figures:
    f = Figures(dedupe_bytes_per_person=dedupe_bytes)
    if not answers:
        return f
    s = series(answers)
    hist = _merge(s.latency)
    f.requests = len(answers)
    f.accepted = sum(s.accepted)
    f.load_seconds = float(s.seconds)
    f.p50_ms, f.p99_ms = percentile(hist, 0.5), percentile(hist, 0.99)
    f.error_rate = sum(s.errors) / f.requests
    f.shed_rate = sum(s.shed) / f.requests
    f.unexpected_rate = unexpected / f.requests
    f.gave_up = sum(1 for a in answers if "gaveup" in a.f)
    f.sustainable_registrations_per_s, f.sustainable_requests_per_s = sustainable_rate(
        s, objectives
    )
    kinds: dict[str, Counter[str]] = defaultdict(Counter)
    for a in answers:
        kinds[a.k][str(a.s)] += 1
    f.by_kind = {k: dict(sorted(v.items())) for k, v in sorted(kinds.items())}
    if samples:
        _from_samples(f, samples, s)
    return f


def _from_samples(f: Figures, samples: Sequence[dict[str, float]], s: Series) -> None:
    t1 = s.t0 + s.seconds  # the last answer
    f.peak_backlog = int(max(x["backlog"] for x in samples))
    f.redis_peak_used_memory = int(max(x["used_memory"] for x in samples))
    per_entry = sorted(x["stream_bytes"] / x["backlog"] for x in samples if x["backlog"] >= 100)
    if per_entry:
        f.stream_bytes_per_entry = per_entry[len(per_entry) // 2]
    f.time_to_drain_s = _time_to_empty(samples, t1)
    flat_out = _drain_episode(samples, s)
    if flat_out is not None:
        f.drain_rate_per_s, seconds = flat_out
        f.peak_backlog_drained_in_s = round(seconds, 1)
        f.drain_rate_source = (
            f"from the peak backlog down, over {seconds:.0f} s: entries left the stream"
            " plus registrations accepted meanwhile"
            + ("; a lower bound at 1 s sampling" if seconds <= 2.5 else "")
        )
    else:
        f.drain_rate_per_s = _best_rate(samples, "drained", 5.0)
        f.drain_rate_source = "best 5 s commit rate; the writers kept up, their ceiling is higher"
    costs.charge(f, samples, s)


def _drain_episode(samples: Sequence[dict[str, float]], s: Series) -> tuple[float, float] | None:
    """(rows/s, seconds) of the drain from the peak backlog to (almost) empty, counted
    from the stream length and the answers, which are exact (the writers' own commit
    counter is only published every few seconds)."""
    peak_at = max(range(len(samples)), key=lambda i: samples[i]["backlog"])
    peak = samples[peak_at]
    if peak["backlog"] < MIN_DRAIN_BACKLOG:
        return None
    low = max(peak["backlog"] * 0.02, 10)
    end = next((x for x in samples[peak_at + 1 :] if x["backlog"] <= low), None)
    if end is None or end["t"] - peak["t"] < 0.5:
        return None
    first = max(int(peak["t"] - s.t0), 0)
    last = max(min(int(end["t"] - s.t0), s.seconds), first)
    arrived = sum(s.accepted[first:last])
    seconds = end["t"] - peak["t"]
    return (peak["backlog"] - end["backlog"] + arrived) / seconds, seconds


def _time_to_empty(samples: Sequence[dict[str, float]], since: float) -> float | None:
    """Seconds from ``since`` until a sample shows an empty backlog (None: never)."""
    for x in samples:
        if x["t"] >= since and x["backlog"] <= 0 and x["pending"] <= 0:
            return round(max(x["t"] - since, 0.0), 1)
    return None


def _best_rate(samples: Sequence[dict[str, float]], key: str, width_s: float) -> float:
    """Highest rise per second of ``key`` over any ``width_s`` span of samples."""
    best = 0.0
    j = 0
    for x in samples:
        while j < len(samples) and samples[j]["t"] - x["t"] < width_s:
            j += 1
        if j == len(samples):
            break
        y = samples[j]
        best = max(best, (y[key] - x[key]) / (y["t"] - x["t"]))
    return best
