#!/usr/bin/env python3
"""Run every benchmark in one go and write ``benchmarks/results/`` (JSON, PNG, Markdown).

    .venv/bin/python benchmarks/run.py            # full run, about 8-10 minutes
    .venv/bin/python benchmarks/run.py --quick    # short form (the test suite runs it)
    python3 ops/dev.py bench [ARGS]               # same, after setting up .venv

Sections (``--only`` picks some): ceiling (HTTP ceiling, round trips, 1 vs 2 processes,
coalesced vs uncoalesced), naive (naive design, concurrency sweep, PostgreSQL stalls),
drain (writer vs raw COPY), clients (redis-py versions and batching), profile (where the
CPU goes), hotpath (micro-benchmarks of cheaper per-request pieces). Private Redis and PostgreSQL are started for the run and stopped after it;
wrk (Debian's package) is installed when missing and we are root.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, sys.path[0] is benchmarks/: import `benchmarks.x` from the root instead,
# so that no module here can shadow a standard one.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))

from benchmarks import harness, report
from benchmarks.bodies import write_templates
from benchmarks.harness import say
from benchmarks.session import BenchConfig, Session
from benchmarks.stack import Stack

SECTIONS = ("ceiling", "naive", "drain", "clients", "profile", "hotpath")


def config_from(args: argparse.Namespace) -> BenchConfig:
    quick = bool(args.quick)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / ("quick" if quick else "")
    return BenchConfig(
        quick=quick,
        duration_s=args.duration or (1.0 if quick else 8.0),
        warmup_s=0.0 if quick else 2.0,
        stall_duration_s=3.0 if quick else 12.0,
        connections=args.connections,
        sweep=(args.connections,) if quick else tuple(sorted({16, args.connections, 128, 256})),
        repeats=args.repeats or (1 if quick else 2),
        stall_kinds=("lock",) if quick else ("lock", "pause"),
        wrk_threads=args.threads,
        redis_versions=() if quick else tuple(args.redis_versions.split(",")),
        loop_seconds=0.3 if quick else 2.0,
        writer_configs=((1, 500),) if quick else ((1, 500), (1, 2000), (2, 500)),
        processes=1 if quick else 2,
        scaling=not quick,
        drain_entries=1_000 if quick else 60_000,
        out_dir=out.resolve(),
        data_dir=Path(args.data_dir).resolve(),
        only=frozenset(args.only.split(",")) if args.only else frozenset(),
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs, fewer variants")
    parser.add_argument("--out", help="results directory (default benchmarks/results[/quick])")
    parser.add_argument("--data-dir", default=str(ROOT / ".data" / "bench"),
                        help="where the private Redis and PostgreSQL keep their files")
    parser.add_argument("--duration", type=float, help="seconds per measured wrk run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--repeats", type=int, help="interleaved repeats of the ceiling runs")
    parser.add_argument("--redis-versions", default="5.2.1,8.1.0",
                        help="redis-py versions for the client comparison (throwaway venvs)")
    parser.add_argument("--only", help=f"comma-separated sections of {','.join(SECTIONS)}")
    args = parser.parse_args(argv)
    if args.only and not set(args.only.split(",")) <= set(SECTIONS):
        parser.error(f"--only takes sections from {','.join(SECTIONS)}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    cfg = config_from(args)
    wrk = harness.ensure_wrk()
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results: dict[str, Any] = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "quick": cfg.quick, "partial": bool(cfg.only)}
    say(f"starting private Redis and PostgreSQL under {cfg.data_dir}")
    stack = Stack.start(cfg.data_dir)
    session = Session(cfg, stack, wrk, write_templates(cfg.out_dir / "templates.txt"),
                      cfg.out_dir / "logs")
    failed: list[str] = []
    try:
        results["environment"] = report.environment(session)
        for name in SECTIONS:
            if not cfg.wants(name):
                continue
            section_started = time.monotonic()
            try:
                results[name] = run_section(name, session, results)
            except Exception as exc:  # noqa: BLE001 - report what failed, keep the rest
                traceback.print_exc()
                failed.append(name)
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                session.stop_all()
            results.setdefault("section_seconds", {})[name] = round(
                time.monotonic() - section_started, 1)
    finally:
        session.stop_all()
        stack.stop()
    results["elapsed_s"] = round(time.time() - started, 1)
    results["targets"] = report.targets(results)
    paths = report.write(results, cfg.out_dir)
    print(report.markdown_table(results))
    for path in paths:
        say(f"wrote {path}")
    if failed:
        say(f"sections failed: {', '.join(failed)}")
        return 1
    return 0


def run_section(name: str, session: Session, results: dict[str, Any]) -> dict[str, Any]:
    if name == "ceiling":
        from benchmarks import ceiling

        return ceiling.run(session)
    if name == "naive":
        from benchmarks import naive

        return naive.run(session)
    if name == "drain":
        from benchmarks import drain

        return drain.run(session)
    if name == "clients":
        from benchmarks import redis_clients

        return redis_clients.run(session)
    if name == "hotpath":
        from benchmarks import hotpath

        return hotpath.run(session)
    from benchmarks import cpu_profile

    return cpu_profile.run(session)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
