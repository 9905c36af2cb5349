"""Load plans and objectives, as plain data: what each named shape does second by second,
and how a breakpoint step is judged. No Locust import: the runner, the report and the
tests read the same tables the Locust shapes follow.

Users are closed-loop people: each submits a registration, waits for the answer, thinks
(``think_s`` on average) and submits the next one, so the offered load is roughly
``users / (think_s + latency)`` requests per second.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

SHAPE_NAMES = ("surge", "spike", "soak", "breakpoint")


@dataclass(frozen=True, slots=True)
class Stage:
    until_s: float  # this stage lasts until this many seconds after the start
    users: int
    spawn_rate: float  # users started (or stopped) per second to reach ``users``


@dataclass(frozen=True)
class Objectives:
    p99_ms: float = 500.0
    max_error_rate: float = 0.001  # 5xx and transport failures / requests
    max_unexpected_rate: float = 0.01  # answers that do not fit the submission
    max_lost: int = 0
    max_duplicated: int = 0

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class PlanOptions:
    peak_users: int = 400
    time_scale: float = 1.0  # multiplies every duration (``--short`` uses ~0.17)
    soak_s: float = 1200.0
    step_users: int = 0  # breakpoint: users added per step (0: peak_users / 5)
    step_s: float = 20.0  # breakpoint: length of a step
    max_users: int = 0  # breakpoint: give up stepping here (0: peak_users * 6)


def _stages(rows: list[tuple[float, float, float]], opts: PlanOptions) -> list[Stage]:
    """``rows`` are (until_s, share of peak users, seconds to get there)."""
    stages = []
    for until_s, share, ramp_s in rows:
        users = max(1, round(opts.peak_users * share))
        ramp = max(ramp_s * opts.time_scale, 0.5)
        stages.append(Stage(until_s * opts.time_scale, users, max(users / ramp, 1.0)))
    return stages


def surge(opts: PlanOptions) -> list[Stage]:
    """Opening time: a trickle of early birds, the whole country within seconds of the
    opening, a hold, a lull, then a second, larger wave when the next age group opens."""
    return _stages(
        [
            (10, 0.03, 1),  # before the opening: early birds
            (70, 1.0, 4),  # the opening: idle to peak within seconds, then hold
            (90, 0.4, 5),  # the lull
            (145, 1.2, 4),  # a new age group opens: the second wave
            (155, 0.1, 5),  # tail
        ],
        opts,
    )


def spike(opts: PlanOptions) -> list[Stage]:
    """A steady load hit by a sudden spike (a televised announcement), then recovery."""
    return _stages([(20, 0.2, 2), (40, 1.0, 1), (80, 0.2, 1)], opts)


def soak(opts: PlanOptions) -> list[Stage]:
    """A long hold at most of the peak: leaks, slow growth, writer stability."""
    hold = max(opts.soak_s, 60.0) / max(opts.time_scale, 1e-9)
    return _stages([(30, 0.6, 30), (30 + hold, 0.6, 1)], opts)


@dataclass(frozen=True)
class Staircase:
    """The breakpoint's steps: ``step_users`` more users every ``step_s`` seconds."""

    step_users: int
    step_s: float
    max_users: int

    @property
    def steps(self) -> int:
        return max(1, math.ceil(self.max_users / self.step_users))


def staircase(opts: PlanOptions) -> Staircase:
    step_users = opts.step_users or max(1, opts.peak_users // 5)
    max_users = opts.max_users or opts.peak_users * 6
    return Staircase(step_users, max(opts.step_s * opts.time_scale, 5.0), max_users)


def breakpoint_steps(opts: PlanOptions) -> list[Stage]:
    """The nominal staircase (the shape stops early when an objective breaks, and holds
    a step once more to confirm a break, so that one noisy second does not end it)."""
    st = staircase(opts)
    return [
        Stage(
            st.step_s * (i + 1),
            min(st.step_users * (i + 1), st.max_users),
            max(st.step_users / 2.0, 1.0),
        )
        for i in range(st.steps)
    ]


def stages_for(name: str, opts: PlanOptions) -> list[Stage]:
    if name == "surge":
        return surge(opts)
    if name == "spike":
        return spike(opts)
    if name == "soak":
        return soak(opts)
    if name == "breakpoint":
        return breakpoint_steps(opts)
    raise ValueError(f"unknown shape {name!r}; choose one of {', '.join(SHAPE_NAMES)}")


def stage_at(stages: list[Stage], run_time_s: float) -> Stage | None:
    for stage in stages:
        if run_time_s < stage.until_s:
            return stage
    return None


def duration_s(stages: list[Stage]) -> float:
    return stages[-1].until_s if stages else 0.0


# --- judging a breakpoint step --------------------------------------------------------


def percentile(histogram: Mapping[int, int], fraction: float) -> float:
    """The ``fraction`` percentile of a {milliseconds: count} histogram (0 when empty)."""
    total = sum(histogram.values())
    if total == 0:
        return 0.0
    rank = math.ceil(total * fraction)
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return float(value)
    return float(max(histogram))


def histogram_delta(after: Mapping[int, int], before: Mapping[int, int]) -> dict[int, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0) > 0}


@dataclass(slots=True)
class StepResult:
    index: int
    users: int
    started_at: float  # epoch seconds: measurement window (after the settling time)
    ended_at: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    error_rate: float
    generator_cpu: float  # percent, of the Locust process that drives the shape
    ok: bool
    broke: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge_step(
    *,
    index: int,
    users: int,
    window: tuple[float, float],
    requests: int,
    errors: int,
    histogram: Mapping[int, int],
    generator_cpu: float,
    objectives: Objectives,
) -> StepResult:
    started, ended = window
    seconds = max(ended - started, 1e-9)
    p99 = percentile(histogram, 0.99)
    error_rate = errors / requests if requests else 0.0
    broke = []
    if requests == 0:
        broke.append("no requests were answered")
    if p99 > objectives.p99_ms:
        broke.append(f"p99 {p99:.0f} ms > {objectives.p99_ms:.0f} ms")
    if error_rate > objectives.max_error_rate:
        broke.append(f"error rate {error_rate:.2%} > {objectives.max_error_rate:.2%}")
    return StepResult(
        index=index,
        users=users,
        started_at=started,
        ended_at=ended,
        requests=requests,
        errors=errors,
        rps=requests / seconds,
        p50_ms=percentile(histogram, 0.5),
        p99_ms=p99,
        error_rate=error_rate,
        generator_cpu=generator_cpu,
        ok=not broke,
        broke=broke,
    )


def last_good(steps: list[StepResult]) -> StepResult | None:
    """The measured capacity: the last step that met the objectives before a confirmed
    break (two missed steps in a row at the same number of users)."""
    good = None
    for previous, step in zip([None, *steps], steps, strict=False):
        if step.ok:
            good = step
        elif previous is not None and not previous.ok and previous.users == step.users:
            break
    return good
