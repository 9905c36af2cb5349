"""The benchmark script runs end to end in its short form and writes well-formed results.

Speed is not asserted here (benchmark figures belong in benchmarks/results/); what is:
every section ran against real services, every body wrk sent was a valid new person
(no 4xx answer anywhere), the writer stored everything it drained, and the JSON, the
Markdown summary and (with matplotlib) the chart were written.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("ceiling", "naive", "drain", "clients", "profile", "hotpath")

pytestmark = [pytest.mark.acceptance, pytest.mark.timeout(300)]


def _wrk_available() -> bool:
    # The script installs Debian's wrk itself when it runs as root with apt-get.
    return shutil.which("wrk") is not None or (os.geteuid() == 0 and shutil.which("apt-get") is not None)


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not _wrk_available():
        # A skipped benchmark check would pass silently: fail, saying what to install.
        pytest.fail("wrk is not installed and cannot be installed without root: apt-get install wrk")
    out = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out),
         "--data-dir", str(out / "data")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=280, check=False,
    )
    assert done.returncode == 0, f"benchmark failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    results["_out"] = str(out)
    return results


def test_quick_benchmark_runs_every_section_without_error(quick_results: dict[str, Any]) -> None:
    for section in SECTIONS:
        assert section in quick_results, section
        if section == "profile" and "py-spy" in quick_results[section].get("error", ""):
            continue  # py-spy absent: the profile says so instead of failing the run
        assert "error" not in quick_results[section], quick_results[section]


def test_quick_benchmark_bodies_are_valid_new_people(quick_results: dict[str, Any]) -> None:
    runs = [*quick_results["ceiling"]["runs"], *quick_results["naive"]["sweep"],
            *quick_results["naive"]["stalls"]]
    assert runs
    for run in runs:
        assert run["accepted_per_s"] > 0, run["service"]
        refused = {code: n for code, n in run["statuses"].items() if code.startswith("4")}
        assert not refused, (run["service"], refused)


def test_quick_benchmark_writer_stores_every_drained_entry(quick_results: dict[str, Any]) -> None:
    drain = quick_results["drain"]
    assert drain["rows"] > 0
    for writer in drain["writers"]:
        assert writer["drained"] is True
        assert writer["stored"] == writer["entries"]
    assert all(v > 0 for v in drain["raw_rows_per_s"].values())


def test_quick_benchmark_reports_a_verdict_for_every_target(quick_results: dict[str, Any]) -> None:
    targets = quick_results["targets"]
    assert set(targets) == {
        "gateway_vs_ceiling", "round_trips_per_registration", "gateway_vs_naive_at_equal_p99",
        "gateway_stall_p99_vs_baseline", "writer_vs_raw_copy",
    }
    for name, verdict in targets.items():
        assert isinstance(verdict["measured"], int | float), name
        assert verdict["met"] in (True, False), name


def test_quick_benchmark_records_load_generator_cpu(quick_results: dict[str, Any]) -> None:
    for run in quick_results["ceiling"]["runs"]:
        assert run["wrk_cores"] > 0
        assert 0 < run["wrk_share_of_machine"] <= 1
        assert run["cpu"]["server_cores"] > 0


def test_quick_benchmark_hotpath_replacements_give_the_same_digests(
    quick_results: dict[str, Any],
) -> None:
    hot = quick_results["hotpath"]
    assert hot["keyed_hashes_us"]["same_digests"] is True
    assert hot["validate_us"] > 0


def test_quick_benchmark_writes_summary_and_chart(quick_results: dict[str, Any]) -> None:
    out = Path(quick_results["_out"])
    summary = (out / "summary.md").read_text()
    assert "| measurement | figure | target | met |" in summary
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
