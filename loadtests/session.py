"""One run against a ready stack: Locust under the sampler's eye, the drain, the
reconciliation, the report and the verdict (see ``loadtests/run.py``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtests import plan, report, sampler, stack
from loadtests.answers import read_answers
from loadtests.figures import compute, read_samples
from loadtests.plots import draw as draw_plots

PROGRESS_EVERY_S = 10.0
LOCUST_MARGIN_S = 180.0


def say(message: str) -> None:
    print(f"loadtest: {message}", file=sys.stderr, flush=True)


class Session:
    def __init__(
        self, args: argparse.Namespace, the_stack: stack.Stack, out: Path, info: dict[str, Any]
    ) -> None:
        self.args = args
        self.stack = the_stack
        self.out = out
        self.info = info
        self.locust_pid: int | None = None

    def roles(self) -> dict[str, list[int]]:
        roles = dict(self.stack.roles)
        if self.locust_pid is not None:
            roles["locust"] = [self.locust_pid]
        return roles

    def run(self, command: list[str]) -> int:
        probe = sampler.Sampler(
            self.out / "samples.csv",
            url=self.stack.url,
            redis_url=self.stack.redis_url,
            key_prefix=self.stack.key_prefix,
            shards=self.args.shards,
            roles=self.roles,
        ).start()
        try:
            code = self.load(command, probe)
            if code not in (0, None):
                say(f"Locust exited with {code}; see {self.out / 'locust.log'}")
                return 2
            drained = self.wait_drained(probe)
            time.sleep(2.0)  # a tail of samples after the drain, for the plot
        finally:
            probe.stop()
        dedupe = None
        if self.stack.redis_url:
            dedupe = sampler.dedupe_key_bytes(self.stack.redis_url, self.stack.key_prefix)
        return self.conclude(drained, dedupe)

    def load(self, command: list[str], probe: sampler.Sampler) -> int | None:
        stages = plan.stages_for(self.args.shape, _plan_options(self.args))
        limit = plan.duration_s(stages) + LOCUST_MARGIN_S
        say(
            f"running Locust, shape {self.args.shape}, about {plan.duration_s(stages):.0f}s of load"
        )
        env = {**os.environ, "LOADTEST_SHAPE": self.args.shape, "PYTHONUNBUFFERED": "1"}
        with (self.out / "locust.log").open("wb") as log:
            child = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            self.locust_pid = child.pid
            started = time.monotonic()
            next_report = started + PROGRESS_EVERY_S
            try:
                while child.poll() is None:
                    time.sleep(0.5)
                    now = time.monotonic()
                    if now - started >= self.args.writer_delay_s:
                        self.stack.start_writer()
                    if now >= next_report:
                        next_report = now + PROGRESS_EVERY_S
                        last = probe.last
                        say(
                            f"  {now - started:4.0f}s  backlog {int(last.get('backlog', 0)):,}"
                            f"  redis {last.get('used_memory', 0) / 2**20:,.0f} MiB"
                        )
                    if now - started > limit:
                        say("Locust overran its shape; stopping it")
                        child.send_signal(signal.SIGINT)
                        child.wait(30)
            except KeyboardInterrupt:
                child.send_signal(signal.SIGINT)
                child.wait(30)
                raise
        return child.returncode

    def wait_drained(self, probe: sampler.Sampler) -> bool:
        say("load finished; waiting for the writer to drain the backlog")
        self.stack.start_writer()
        deadline = time.monotonic() + self.args.drain_timeout
        time.sleep(1.5)
        while time.monotonic() < deadline:
            last = probe.last
            if last and last.get("backlog", -1) == 0 and last.get("pending", 0) == 0:
                return True
            if self.stack.private and not self.stack.child_alive("writer"):
                say("the writer exited during the drain")
                return False
            time.sleep(0.5)
        say(f"backlog not drained within {self.args.drain_timeout:.0f}s")
        return False

    def conclude(self, drained: bool, dedupe: float | None) -> int:
        answers = list(read_answers(self.out))
        if not answers:
            say("no answers were recorded: the load did not reach the gateway")
            return 2
        rec: dict[str, Any] = {"lost": None, "duplicated": None}
        if self.stack.database_url:
            from loadtests.reconcile import reconcile

            since = datetime.fromtimestamp(self.info["started_at"] - 5, UTC)
            rec = asyncio.run(reconcile(self.stack.database_url, answers, since)).as_dict()
        else:
            say("no database URL: reconciliation skipped (give --database-url)")
        rec["drained"] = drained
        (self.out / "reconciliation.json").write_text(json.dumps(rec, indent=1) + "\n")
        samples = read_samples(self.out / "samples.csv")
        objectives = plan.Objectives(
            **{
                k: v
                for k, v in self.info["objectives"].items()
                if k in ("p99_ms", "max_error_rate", "max_unexpected_rate")
            }
        )
        unexpected = sum(1 for a in answers if "unexpected" in a.f)
        figures = compute(answers, samples, objectives, dedupe_bytes=dedupe, unexpected=unexpected)
        checks = report.verdict(
            figures,
            {k: (v if v is not None else 1) for k, v in rec.items()},
            self.info["objectives"],
        )
        if not drained:
            checks.append(report.Check("backlog drained", "yes", "no", False))
        bp_path = self.out / "breakpoint.json"
        breakpoint = json.loads(bp_path.read_text()) if bp_path.exists() else None
        if self.args.shape == "breakpoint":
            checks = report.breakpoint_checks(checks, breakpoint)
        plots = draw_plots(self.out, objectives.p99_ms)
        path = report.write(self.out, self.info, figures, rec, checks, plots, breakpoint)
        self.print_summary(figures, rec, checks, breakpoint, path)
        return 0 if all(c.passed for c in checks) else 1

    def print_summary(
        self,
        f: Any,
        rec: dict[str, Any],
        checks: list[report.Check],
        breakpoint: dict[str, Any] | None,
        path: Path,
    ) -> None:
        print(
            f"\n{f.requests:,} requests, {f.accepted:,} registrations accepted; "
            f"sustainable {f.sustainable_registrations_per_s:,.0f} registrations/s at the objective; "
            f"peak backlog {f.peak_backlog:,}; drain {f.drain_rate_per_s:,.0f} rows/s; "
            f"time to drain {f.time_to_drain_s if f.time_to_drain_s is not None else 'n/a'} s"
        )
        if breakpoint is not None:
            step = breakpoint.get("capacity_step")
            print(
                "breakpoint capacity: "
                + (
                    f"{step['rps']:,.0f} requests/s at {step['users']} users (p99 {step['p99_ms']:.0f} ms)"
                    if step
                    else "the first step already broke an objective"
                )
            )
        print(
            f"reconciliation: lost={rec.get('lost')} duplicated={rec.get('duplicated')} "
            f"misattributed={rec.get('misattributed')} dead_lettered={rec.get('dead_lettered')}"
        )
        for c in checks:
            print(
                f"  {'ok  ' if c.passed else 'FAIL'} {c.name}: {c.measured} (objective {c.objective})"
            )
        print(
            f"verdict: {'PASS' if all(c.passed for c in checks) else 'FAIL'}; report {path}",
            flush=True,
        )


def _plan_options(args: argparse.Namespace) -> plan.PlanOptions:
    return plan.PlanOptions(
        peak_users=args.peak_users,
        time_scale=args.time_scale,
        soak_s=args.soak_s,
        step_users=args.step_users,
        step_s=args.step_s,
        max_users=args.max_users,
    )
