"""What the rate limiter costs per request: the real gateway with limits off, with limits
on that every request passes (the full counting work, nothing refused), and with a client
far over its limit (every answer a 429), in the same run, alternating, against private
Redis and PostgreSQL. wrk drives new, valid registrations (``benchmarks/bodies.py``).

    python benchmarks/ratelimit_cost.py [--duration 10] [--rounds 3] [--connections 64]

Prints one line per measured run, then the medians and the ratios to "off". All requests
come from 127.0.0.1, and the 200 body templates carry 200 phones: a batch updates one
client counter and up to 200 phone counters in one pipelined round trip.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness
from benchmarks.bodies import write_templates
from benchmarks.stack import Stack
from gateway.devstack import free_port

BIG = str(10**9)
CONFIGS: dict[str, dict[str, str]] = {
    "off": {},
    "on, all pass": {"GATEWAY_RATE_LIMIT_PER_IP": BIG, "GATEWAY_RATE_LIMIT_PER_PHONE": BIG},
    "on, all 429": {"GATEWAY_RATE_LIMIT_PER_IP": "1", "GATEWAY_RATE_LIMIT_PER_PHONE": BIG},
}


def gateway_env(stack: Stack, database_url: str, port: int, prefix: str,
                extra: dict[str, str]) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GATEWAY_", "PG")) and k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(REDIS_URL=stack.redis.url, DATABASE_URL=database_url, GATEWAY_KEY_PREFIX=prefix,
               GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(port), GATEWAY_LOG_LEVEL="WARNING",
               GATEWAY_WRITER_METRICS_PORT="0", GATEWAY_SHUTDOWN_GRACE_S="2", **extra)
    return env


def measure(stack: Stack, database_url: str, templates: Any, wrk: str, label: str,
            run: int, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    port = free_port()
    prefix = f"rl{run}:"
    env = gateway_env(stack, database_url, port, prefix, CONFIGS[label])
    group = harness.start_group(f"gateway-{run}", [sys.executable, "-m", "gateway", "serve"],
                                1, port, env, log_dir)
    try:
        harness.wait_ready([group])
        offset = run * 2_000_000  # no person is sent twice across runs
        harness.run_wrk(wrk, group.url, templates=templates.path, offset=offset,
                        duration_s=args.warmup, connections=args.connections)
        before = stack.command_calls()
        result = harness.run_wrk(wrk, group.url, templates=templates.path,
                                 offset=offset + 1_000_000, duration_s=args.duration,
                                 connections=args.connections, watch={"server": group.pids})
        after = stack.command_calls()
    finally:
        group.stop()
    summary = result.summary(accepted_statuses=(202, 429) if "429" in label else (202,))
    answered = max(int(result.report.get("requests", 0)), 1)
    calls = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    stack.client().flushdb()  # a private Redis: the next run starts empty
    return {
        "label": label,
        "answers_per_s": summary["answers_per_s"],
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "server_cpu_us": summary["server_cpu_us_per_answer"],
        "evalsha_per_answer": round(calls.get("evalsha", 0) / answered, 3),
        "statuses": summary["statuses"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    wrk = harness.ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="ratelimit-bench-") as tmp:
        root = Path(tmp)
        templates = write_templates(root / "templates.txt")
        stack = Stack.start(root)
        rows: list[dict[str, Any]] = []
        try:
            database_url = stack.fresh_database("ratelimit_bench")
            labels = list(CONFIGS)
            run = 0
            for round_ in range(args.rounds):
                # Rotate the order so slow drift on a shared machine hits every config.
                for label in labels[round_ % len(labels):] + labels[: round_ % len(labels)]:
                    row = measure(stack, database_url, templates, wrk, label, run, args,
                                  root / "logs")
                    rows.append(row)
                    run += 1
                    print(f"round {round_ + 1} {label:<13} {row['answers_per_s']:>8.0f} answers/s"
                          f"  p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms"
                          f"  gateway CPU {row['server_cpu_us']} µs/answer"
                          f"  EVALSHA/answer {row['evalsha_per_answer']}"
                          f"  statuses {row['statuses']}", flush=True)
                    time.sleep(0.5)
        finally:
            stack.stop()
    print(f"\nmedians over {args.rounds} rounds ({args.duration:g}s each, "
          f"{args.connections} connections, 1 gateway process):")
    base: dict[str, float] = {}
    for label in CONFIGS:
        mine = [r for r in rows if r["label"] == label]
        rate = statistics.median(r["answers_per_s"] for r in mine)
        cpu = statistics.median(r["server_cpu_us"] for r in mine)
        p99 = statistics.median(r["p99_ms"] for r in mine)
        base = base or {"rate": rate, "cpu": cpu}
        print(f"  {label:<13} {rate:>8.0f} answers/s ({rate / base['rate']:.2f}x off)"
              f"  {cpu:>6.1f} µs gateway CPU/answer ({cpu - base['cpu']:+.1f} µs)"
              f"  p99 {p99:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
