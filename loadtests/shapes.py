"""Load shapes as Locust ``LoadTestShape`` classes, one per name in :data:`SHAPES`.

The tables live in :mod:`loadtests.plan`; these classes follow them second by second and
write what they did (``shape.json``, and for the breakpoint ``breakpoint.json``) into
the run's answers directory for the report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from locust import LoadTestShape

from loadtests import plan

GAVE_UP = "(gave up)"  # suffix of the Locust request name of a client's chosen give-up


def add_shape_options(group: Any) -> None:
    add = group.add_argument
    add("--load-shape", default="surge", help="surge | spike | soak | breakpoint")
    add("--peak-users", type=int, default=plan.PlanOptions.peak_users)
    add("--time-scale", type=float, default=1.0, help="multiplies every stage duration")
    add("--soak-s", type=float, default=plan.PlanOptions.soak_s)
    add("--step-users", type=int, default=0, help="breakpoint: users added per step")
    add("--step-s", type=float, default=plan.PlanOptions.step_s, help="breakpoint: step length")
    add("--max-users", type=int, default=0, help="breakpoint: stop stepping here")
    add("--p99-ms", type=float, default=plan.Objectives.p99_ms, help="objective: p99 latency")
    add("--max-error-rate", type=float, default=plan.Objectives.max_error_rate)


def _plan_options(opts: Any) -> plan.PlanOptions:
    return plan.PlanOptions(
        peak_users=opts.peak_users,
        time_scale=opts.time_scale,
        soak_s=opts.soak_s,
        step_users=opts.step_users,
        step_s=opts.step_s,
        max_users=opts.max_users,
    )


class _PlannedShape(LoadTestShape):
    abstract = True
    shape_name = ""

    def __init__(self) -> None:
        super().__init__()
        self._stages: list[plan.Stage] | None = None
        self._started_epoch = 0.0

    def _opts(self) -> Any:
        assert self.runner is not None
        return self.runner.environment.parsed_options

    def _out(self) -> Path:
        path = Path(self._opts().answers_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def stages(self) -> list[plan.Stage]:
        if self._stages is None:
            self._stages = plan.stages_for(self.shape_name, _plan_options(self._opts()))
            self._started_epoch = time.time() - self.get_run_time()
            record = {
                "shape": self.shape_name,
                "started_at": self._started_epoch,
                "stages": [
                    {"until_s": s.until_s, "users": s.users, "spawn_rate": s.spawn_rate}
                    for s in self._stages
                ],
            }
            (self._out() / "shape.json").write_text(json.dumps(record, indent=1))
        return self._stages

    def tick(self) -> tuple[int, float] | None:
        stage = plan.stage_at(self.stages(), self.get_run_time())
        return None if stage is None else (stage.users, stage.spawn_rate)


class SurgeShape(_PlannedShape):
    shape_name = "surge"


class SpikeShape(_PlannedShape):
    shape_name = "spike"


class SoakShape(_PlannedShape):
    shape_name = "soak"


class BreakpointShape(_PlannedShape):
    """Adds users step by step and judges each step on its settled part (the last 60 %).
    A step that misses an objective is held once more; when it misses again the run
    ends, and the last step that met the objectives is the measured capacity."""

    shape_name = "breakpoint"
    settle_share = 0.4

    def __init__(self) -> None:
        super().__init__()
        self._users = 0
        self._step_started = 0.0
        self._confirming = False
        self._snapshot: tuple[float, int, int, dict[int, int]] | None = None
        self._results: list[plan.StepResult] = []

    def tick(self) -> tuple[int, float] | None:
        self.stages()  # records the nominal staircase
        st = plan.staircase(_plan_options(self._opts()))
        now = self.get_run_time()
        if self._users == 0:
            self._users, self._step_started = st.step_users, now
        elif now >= self._step_started + st.step_s:
            ok = self._finish_step()
            if not ok and self._confirming:
                return None
            self._confirming = not ok
            if ok:
                self._users += st.step_users
            if self._users > st.max_users:
                return None
            self._step_started, self._snapshot = now, None
        if self._snapshot is None and now >= self._step_started + st.step_s * self.settle_share:
            self._snapshot = self._take()
        return self._users, max(st.step_users / 2.0, 1.0)

    def _take(self) -> tuple[float, int, int, dict[int, int]]:
        """Totals so far, leaving out requests whose client chose to give up."""
        assert self.runner is not None
        requests = failures = 0
        histogram: dict[int, int] = {}
        for entry in self.runner.stats.entries.values():
            if GAVE_UP in entry.name:
                continue
            requests += entry.num_requests
            failures += entry.num_failures
            for ms, count in entry.response_times.items():
                histogram[ms] = histogram.get(ms, 0) + count
        return time.time(), requests, failures, histogram

    def _finish_step(self) -> bool:
        """Judge the step that just ended; False when it missed an objective."""
        if self._snapshot is None:
            return True
        assert self.runner is not None
        started, requests, failures, histogram = self._snapshot
        ended, requests_now, failures_now, histogram_now = self._take()
        opts = self._opts()
        result = plan.judge_step(
            index=len(self._results),
            users=self._users,
            window=(started, ended),
            requests=requests_now - requests,
            errors=failures_now - failures,
            histogram=plan.histogram_delta(histogram_now, histogram),
            generator_cpu=float(getattr(self.runner, "current_cpu_usage", 0.0)),
            objectives=plan.Objectives(p99_ms=opts.p99_ms, max_error_rate=opts.max_error_rate),
        )
        self._results.append(result)
        good = plan.last_good(self._results)
        record = {
            "objectives": {"p99_ms": opts.p99_ms, "max_error_rate": opts.max_error_rate},
            "steps": [r.as_dict() for r in self._results],
            "capacity_step": good.as_dict() if good else None,
        }
        (self._out() / "breakpoint.json").write_text(json.dumps(record, indent=1))
        return result.ok


SHAPES: dict[str, type[_PlannedShape]] = {
    "surge": SurgeShape,
    "spike": SpikeShape,
    "soak": SoakShape,
    "breakpoint": BreakpointShape,
}
