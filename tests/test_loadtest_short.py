"""The CI surge: the real load-test command, shortened to tens of seconds and a few dozen
users, against a private stack it starts itself. It fails on any lost or duplicated
registration. Latency objectives are relaxed here: speed is judged by the full runs and
the benchmarks, not by a test on a shared CI machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 420  # the first run also creates .venv-locust


@pytest.mark.acceptance
@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_short_surge_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "surge"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "loadtests" / "run.py"),
            "--shape",
            "surge",
            "--short",
            "--results-dir",
            str(out),
            "--p99-ms",
            "30000",
            "--max-error-rate",
            "0.05",
        ],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    reconciliation = json.loads((out / "reconciliation.json").read_text())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert reconciliation["lost"] == 0
    assert reconciliation["duplicated"] == 0
    assert reconciliation["misattributed"] == 0
    assert reconciliation["drained"] is True
    # Enough happened to mean something: people accepted, resubmissions recognised.
    assert reconciliation["accepted_ids"] >= 200
    assert reconciliation["accepted_answers"] > reconciliation["accepted_ids"]
    capacity = json.loads((out / "capacity.json").read_text())
    assert capacity["passed"] is True
    assert {"new", "retry", "respelled", "conflict", "invalid"} <= set(
        capacity["figures"]["by_kind"]
    )
    report = (out / "capacity.md").read_text()
    assert "**0 lost**" in report and "**0 duplicated**" in report
    assert (out / "load.png").stat().st_size > 0 and (out / "backlog.png").stat().st_size > 0
    assert (out / "locust.html").exists() and (out / "locust_stats.csv").exists()
    assert "verdict: PASS" in done.stdout
