"""The short form of ``gateway chaos``, as an operator runs it: private Redis and
PostgreSQL, real gateway and writer processes, Redis restarted, PostgreSQL killed and
brought back, the writer SIGKILLed mid-batch, all under load; then every registration
id answered 202/200 is looked up in PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

SHORT_SCENARIOS = {"redis_restart", "postgres_down", "writer_killed"}


@pytest.mark.acceptance
def test_short_chaos_run_loses_nothing_duplicates_nothing_and_never_fails_a_client(
    tmp_path: Path,
) -> None:
    report = tmp_path / "rows.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "chaos", "--short", "--json", str(report),
         "--data-dir", str(tmp_path / "run")],
        env=env, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL, check=False,
    )
    assert report.exists(), done.stderr[-3000:]
    rows = orjson.loads(report.read_bytes())
    table = done.stdout
    assert {row["scenario"] for row in rows} == SHORT_SCENARIOS, table
    for row in rows:
        assert row["lost"] == 0, table
        assert row["duplicated"] == 0, table
        assert row["crossed"] == 0, table
        assert row["server_errors"] == 0, table  # no 500, no 503 without Retry-After
        assert row["failed"] == [], table
        assert row["accepted"] > 0, table
    # Each fault was felt, and answered honestly.
    by_name = {row["scenario"]: row for row in rows}
    assert by_name["redis_restart"]["shed"] > 0, table
    assert done.returncode == 0, table + done.stderr[-3000:]
    for header in ("scenario", "requests", "202", "lost", "duplicated", "5xx", "worst s"):
        assert header in table.splitlines()[0]
