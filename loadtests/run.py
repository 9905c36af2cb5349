#!/usr/bin/env python3
"""One launch-day load test, start to verdict:

  python3 ops/dev.py loadtest --shape surge        (or: make loadtest SHAPE=surge)

1. makes sure ``.venv-locust`` exists (Locust lives there, never in ``.venv``);
2. uses the deployment at ``--url`` or starts a private stack (Redis, PostgreSQL,
   ``gateway serve --workers N``, ``gateway writer``), torn down at the end;
3. runs Locust headless with the named shape, sampling backlog, Redis memory and CPU
   once a second;
4. waits for the writer to drain the backlog, then reconciles every registration id
   answered 202/200 against PostgreSQL;
5. writes the capacity report and prints the verdict; exits 1 when an objective failed
   (p99, server-error rate, unexpected answers, lost, duplicated), 2 when the run
   itself could not be made.

Results: ``loadtests/results/<timestamp>-<shape>/``. Arguments after ``--`` go to Locust
(e.g. ``-- --retry-share 0.1 --impatient-share 0.05``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests import locustenv, plan, stack
from loadtests.session import Session

ROOT = Path(__file__).resolve().parent.parent
SHORT = {"peak_users": 40, "time_scale": 0.17, "step_s": 10.0, "soak_s": 60.0}
# The short CI run also exercises clients that give up mid-request and resubmit.
SHORT_LOCUST = ["--impatient-share", "0.1", "--impatient-give-up-s", "0.005"]


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_shape = os.environ.get("LOADTEST_SHAPE") or os.environ.get("SHAPE") or "surge"
    p.add_argument("--shape", choices=plan.SHAPE_NAMES, default=default_shape)
    p.add_argument("--short", action="store_true", help="tens of seconds, small numbers (CI)")
    p.add_argument("--url", help="use this gateway instead of starting a private stack")
    p.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", ""), help="with --url: for sampling"
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", ""),
        help="with --url: to reconcile",
    )
    p.add_argument("--key-prefix", default=os.environ.get("GATEWAY_KEY_PREFIX", ""))
    p.add_argument("--shards", type=int, default=int(os.environ.get("GATEWAY_SHARDS") or 1))
    p.add_argument(
        "--gateway-workers", type=int, default=2, help="private stack: gateway processes"
    )
    p.add_argument("--writers", type=int, default=1, help="private stack: writer processes")
    p.add_argument(
        "--writer-delay-s",
        type=float,
        default=0.0,
        help="private stack: start the writer this long after the load (builds a backlog"
        " whose drain rate, memory per entry and drain time are then measured)",
    )
    p.add_argument("--peak-users", type=int)
    p.add_argument("--time-scale", type=float)
    p.add_argument("--soak-s", type=float)
    p.add_argument("--step-users", type=int, default=0)
    p.add_argument("--step-s", type=float)
    p.add_argument("--max-users", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--p99-ms", type=float, default=plan.Objectives.p99_ms)
    p.add_argument("--max-error-rate", type=float, default=plan.Objectives.max_error_rate)
    p.add_argument("--max-unexpected-rate", type=float, default=plan.Objectives.max_unexpected_rate)
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="Locust processes on this machine (-1: one per core)",
    )
    p.add_argument(
        "--master", action="store_true", help="distributed: wait for remote Locust workers"
    )
    p.add_argument("--expect-workers", type=int, default=1)
    p.add_argument("--master-bind-host", default="*")
    p.add_argument("--master-bind-port", type=int, default=5557)
    p.add_argument("--drain-timeout", type=float, default=900.0)
    p.add_argument("--results-dir", type=Path)
    args = p.parse_args(argv)
    for key, value in (SHORT if args.short else {}).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.peak_users is None:
        # Sized to the machine: a laptop's run should pass, a big box should be pushed.
        args.peak_users = min(max(50 * (os.cpu_count() or 1), 50), 1000)
    defaults = plan.PlanOptions()
    for key in ("time_scale", "soak_s", "step_s"):
        if getattr(args, key) is None:
            setattr(args, key, getattr(defaults, key))
    if args.short:
        extra = [*SHORT_LOCUST, *extra]
    return args, extra


def locust_command(args: argparse.Namespace, extra: list[str], url: str, out: Path) -> list[str]:
    cmd = [
        str(locustenv.locust()),
        "-f",
        str(ROOT / "loadtests" / "locustfile.py"),
        "--headless",
        "--host",
        url,
        "--csv",
        str(out / "locust"),
        "--csv-full-history",
        "--html",
        str(out / "locust.html"),
        "--exit-code-on-error",
        "0",
        "--stop-timeout",
        "3",
        "--loglevel",
        "WARNING",
        "--answers-dir",
        str(out),
        "--load-shape",
        args.shape,
        "--seed",
        str(args.seed or int(time.time())),
        "--peak-users",
        str(args.peak_users),
        "--time-scale",
        str(args.time_scale),
        "--soak-s",
        str(args.soak_s),
        "--step-users",
        str(args.step_users),
        "--step-s",
        str(args.step_s),
        "--max-users",
        str(args.max_users),
        "--p99-ms",
        str(args.p99_ms),
        "--max-error-rate",
        str(args.max_error_rate),
    ]
    if args.master:
        cmd += [
            "--master",
            "--expect-workers",
            str(args.expect_workers),
            "--master-bind-host",
            args.master_bind_host,
            "--master-bind-port",
            str(args.master_bind_port),
        ]
    elif args.processes != 1:
        cmd += ["--processes", str(args.processes)]
    return cmd + extra


def meta(args: argparse.Namespace, started: datetime, the_stack: stack.Stack) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if the_stack.private:
        described = (
            f"private (Redis AOF everysec, PostgreSQL), {args.gateway_workers} gateway "
            f"process(es), {args.writers} writer process(es)"
        )
        if args.writer_delay_s > 0:
            described += f" started {args.writer_delay_s:g} s into the load"
    else:
        described = f"external {the_stack.url}"
    load = f"shape {args.shape}, peak {args.peak_users} users, time scale {args.time_scale}"
    if args.master:
        load += f", distributed over {args.expect_workers} worker(s)"
    elif args.processes != 1:
        load += f", {args.processes} Locust processes"
    return {
        "shape": args.shape,
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "started_at": started.timestamp(),
        "commit": commit,
        "stack": described,
        "gateway_workers": args.gateway_workers if the_stack.private else None,
        "writers": args.writers if the_stack.private else None,
        "load": load,
        "machine": f"{os.cpu_count()} CPUs, {platform.system()} {platform.machine()}, "
        f"load average {os.getloadavg()[0]:.1f} at the start (shared)",
        "objectives": plan.Objectives(
            p99_ms=args.p99_ms,
            max_error_rate=args.max_error_rate,
            max_unexpected_rate=args.max_unexpected_rate,
        ).as_dict(),
        "short": args.short,
    }


def main(argv: list[str]) -> int:
    args, extra = parse(argv)
    started = datetime.now(UTC)
    out = (
        args.results_dir or ROOT / "loadtests" / "results" / f"{started:%Y%m%d-%H%M%S}-{args.shape}"
    )
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    locustenv.ensure()
    say(f"results in {out}")
    if args.url:
        the_stack = stack.external(args.url, args.redis_url, args.database_url, args.key_prefix)
    else:
        say(f"starting a private stack ({args.gateway_workers} gateway, {args.writers} writer)")
        the_stack = stack.start_private(
            gateway_workers=args.gateway_workers,
            writers=args.writers,
            port=None,
            log_dir=out,
            start_writer=args.writer_delay_s <= 0,
        )
    try:
        info = meta(args, started, the_stack)
        (out / "run.json").write_text(json.dumps(info, indent=1) + "\n")
        session = Session(args, the_stack, out, info)
        return session.run(locust_command(args, extra, the_stack.url, out))
    finally:
        the_stack.stop()


def say(message: str) -> None:
    print(f"loadtest: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
