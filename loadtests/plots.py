"""The report's plots: ``load.png`` (throughput and p50/p99 latency over time) and
``backlog.png`` (backlog depth, commit rate and Redis memory over time).

matplotlib lives in ``.venv-locust`` with the rest of the load-test tooling, so the
runner draws through :func:`draw`, which runs this file there:
``.venv-locust/bin/python loadtests/plots.py RUN_DIR --p99-ms 500``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.answers import read_answers
from loadtests.figures import Series, read_samples, rolling_percentiles, series

MB = 1024 * 1024
NAMES = ("load.png", "backlog.png")


def draw(run_dir: Path, p99_objective: float) -> list[str]:
    """Draw the plots with the Locust environment's matplotlib; the names drawn."""
    from loadtests import locustenv

    done = subprocess.run(
        [
            str(locustenv.python()),
            str(Path(__file__).resolve()),
            str(run_dir),
            "--p99-ms",
            str(p99_objective),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        print(f"loadtest: plots not drawn: {done.stderr.strip()[-500:]}", file=sys.stderr)
    return [name for name in NAMES if (run_dir / name).exists()]


def _load(run_dir: Path, s: Series, p99_objective: float) -> None:
    import matplotlib.pyplot as plt

    x = list(range(s.seconds))
    p50, p99 = rolling_percentiles(s)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, dpi=80)
    top.plot(x, s.answered, label="answered requests/s", lw=1)
    top.plot(x, s.accepted, label="registrations accepted (202)/s", lw=1)
    failed = [a + b for a, b in zip(s.shed, s.errors, strict=True)]
    top.plot(x, failed, label="shed + server errors/s", lw=1)
    top.set_ylabel("per second")
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bottom.plot(x, p50, label="p50 (5 s window)", lw=1)
    bottom.plot(x, p99, label="p99 (5 s window)", lw=1)
    bottom.axhline(p99_objective, color="red", ls="--", lw=0.8, label="p99 objective")
    bottom.set_ylabel("latency, ms")
    bottom.set_xlabel("seconds since the first request")
    bottom.set_yscale("log")
    bottom.set_ylim(bottom=1)
    bottom.legend(loc="upper left", fontsize=8)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "load.png")
    plt.close(fig)


def _backlog(run_dir: Path, s: Series, samples: Sequence[dict[str, float]]) -> None:
    import matplotlib.pyplot as plt

    t = [r["t"] - s.t0 for r in samples]
    rate = [0.0] + [
        max((b["drained"] - a["drained"]) / max(b["t"] - a["t"], 1e-6), 0.0)
        for a, b in pairwise(samples)
    ]
    smooth = [
        sum(rate[max(0, i - 4) : i + 1]) / len(rate[max(0, i - 4) : i + 1])
        for i in range(len(rate))
    ]
    stopped = s.seconds  # the last answer, in seconds since the first request
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, dpi=80)
    top.plot(
        t, [r["backlog"] for r in samples], label="backlog (entries not yet committed)", lw=1.2
    )
    top.set_ylabel("entries")
    twin = top.twinx()
    twin.plot(t, smooth, color="tab:green", lw=1, label="rows committed/s (5 s mean)")
    twin.set_ylabel("rows/s")
    top.axvline(stopped, color="grey", ls=":", lw=1)
    top.legend(loc="upper left", fontsize=8)
    twin.legend(loc="upper right", fontsize=8)
    top.grid(alpha=0.3)
    bottom.plot(t, [r["used_memory"] / MB for r in samples], label="Redis used_memory", lw=1)
    bottom.plot(t, [r["stream_bytes"] / MB for r in samples], label="intake streams", lw=1)
    bottom.axvline(stopped, color="grey", ls=":", lw=1, label="load stopped")
    bottom.set_ylabel("MiB")
    bottom.set_xlabel("seconds since the first request")
    bottom.legend(loc="upper left", fontsize=8)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "backlog.png")
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="draw a load-test run's plots")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--p99-ms", type=float, default=500.0)
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    s = series(read_answers(args.run_dir))
    _load(args.run_dir, s, args.p99_ms)
    samples = read_samples(args.run_dir / "samples.csv")
    if samples:
        _backlog(args.run_dir, s, samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
