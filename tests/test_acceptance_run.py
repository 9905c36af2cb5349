"""The main job as a new user runs it: ``gateway run`` with no servers given, then
``gateway demo`` twice, Ctrl-C, and a restart on the same data."""

from __future__ import annotations

import os
import re
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gateway.devstack import free_port

pytestmark = pytest.mark.acceptance


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["GATEWAY_LOG_LEVEL"] = "WARNING"
    return env


def _start(data: Path, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--data-dir", str(data), "--port", str(port)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    deadline = time.monotonic() + 120
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if "Intake gateway ready" in line:
            return proc
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("gateway run did not come up:\n" + "".join(seen[-30:]))


def _ctrl_c(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 0


def _demo(data: Path, count: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--count", str(count), "--data-dir", str(data),
         "--concurrency", "16", "--seed", "11"],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    figures = {name: int(n) for name, n in re.findall(r"(accepted|replayed|conflicts|rejected): (\d+)", out.stdout)}
    figures["missing"] = int(re.search(r"(\d+) missing", out.stdout).group(1))  # type: ignore[union-attr]
    figures["stored"] = int(re.search(r"in PostgreSQL: (\d+) of", out.stdout).group(1))  # type: ignore[union-attr]
    return figures


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and int(pid) != os.getpid():
            found.append(int(pid))
    return found


def test_run_demo_replay_ctrl_c_and_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    proc = _start(data, port)
    try:
        first = _demo(data, 300)
        assert first["accepted"] > 200 and first["missing"] == 0
        assert first["stored"] == first["accepted"]
        second = _demo(data, 300)
        assert second["accepted"] == 0
        assert second["replayed"] >= first["accepted"]
        assert second["missing"] == 0
    finally:
        _ctrl_c(proc)
    time.sleep(1)
    assert _processes_mentioning(str(data)) == []
    assert _processes_mentioning(f"--port {port}") == []
    assert not (data / "stack.env").exists()

    # Data survives a restart: the same people are replays, and their rows are found.
    proc = _start(data, port)
    try:
        third = _demo(data, 300)
        assert third["accepted"] == 0 and third["missing"] == 0
        assert third["stored"] == second["stored"]
    finally:
        _ctrl_c(proc)
    time.sleep(1)
    assert _processes_mentioning(str(data)) == []
