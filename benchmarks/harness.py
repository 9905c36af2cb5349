"""Processes under test, the wrk load generator, and CPU accounting from /proc.

Every figure the benchmark reports comes from one wrk run against N server processes
sharing a port. Around each run we read the CPU time of wrk (``wait4`` rusage), of the
server processes, of Redis and PostgreSQL (``/proc/<pid>/stat``) and of the whole machine
(``/proc/stat``), so the report shows how much of the 2 cores the load generator took and
how busy the other tenants of the machine were.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WRK_SCRIPT = ROOT / "benchmarks" / "wrk" / "register.lua"
LOGS_HINT = "the service logs in <results>/logs/"
_TICK = os.sysconf("SC_CLK_TCK")


_T0 = time.monotonic()


def say(message: str) -> None:
    """Progress on stdout, with the seconds since the run began."""
    print(f"bench [{time.monotonic() - _T0:6.1f}s] {message}", flush=True)


class BenchError(RuntimeError):
    """The benchmark cannot go on (a tool is missing, a server did not start)."""


# --- wrk ---------------------------------------------------------------------------


def ensure_wrk() -> str:
    """Path of ``wrk``; installs Debian's package when missing and we are root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say("wrk not found; installing Debian's wrk package")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")

        def apt(*args: str) -> int:
            return subprocess.run(["apt-get", *args], stdout=subprocess.DEVNULL, env=env,
                                  check=False).returncode

        if apt("install", "-y", "-qq", "wrk"):
            apt("update", "-qq")  # a fresh container has no package lists yet
            apt("install", "-y", "-qq", "wrk")
        found = shutil.which("wrk")
        if found:
            return found
    raise BenchError(
        "wrk is needed (an HTTP load generator outside Python). Install it with "
        "`sudo apt-get install wrk` (Debian/Ubuntu), `brew install wrk` (macOS), or build "
        "it from https://github.com/wg/wrk and put it on PATH."
    )


# --- CPU accounting ----------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (PostgreSQL backends, supervisor children)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user
    return float(total - idle), float(total)


@dataclass
class CpuWatch:
    """CPU seconds used by named process trees between ``start`` and ``stop``."""

    roots: Mapping[str, Sequence[int]]
    _before: dict[str, dict[int, float]] = field(default_factory=dict)
    _machine: tuple[float, float] = (0.0, 0.0)
    _t0: float = 0.0

    def _sample(self) -> dict[str, dict[int, float]]:
        return {
            name: {p: process_cpu_s(p) for root in pids for p in tree(root)}
            for name, pids in self.roots.items()
        }

    def start(self) -> None:
        self._before = self._sample()
        self._machine = machine_cpu()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        wall = max(time.monotonic() - self._t0, 1e-6)
        after = self._sample()
        used: dict[str, float] = {}
        for name, now in after.items():
            before = self._before.get(name, {})
            used[name] = sum(max(v - before.get(p, 0.0), 0.0) for p, v in now.items())
        busy0, total0 = self._machine
        busy1, total1 = machine_cpu()
        cores = os.cpu_count() or 1
        result = {f"{name}_cores": round(v / wall, 3) for name, v in used.items()}
        result["machine_busy_cores"] = round(cores * (busy1 - busy0) / max(total1 - total0, 1), 3)
        result["machine_cores"] = cores
        result["wall_s"] = round(wall, 3)
        return result


# --- server processes ----------------------------------------------------------------


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    return inodes


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself holds a listening socket on ``port``."""
    wanted = _listening_inodes(port)
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in wanted:
            return True
    return False


@dataclass
class Group:
    """N processes of one service sharing a port with SO_REUSEPORT."""

    name: str
    port: int
    procs: list[subprocess.Popen[bytes]]
    log_path: Path
    listen: bool = True

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, grace_s: float = 10.0) -> None:
        stop_groups([self], grace_s)


def stop_groups(groups: Sequence[Group], grace_s: float = 10.0) -> None:
    procs = [p for g in groups for p in g.procs]
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_group(
    name: str, argv: Sequence[str], count: int, port: int, env: Mapping[str, str],
    log_dir: Path, *, listen: bool = True,
) -> Group:
    """Spawn ``count`` processes; :func:`wait_ready` waits until they listen."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        procs = [
            subprocess.Popen(list(argv), env=dict(env), cwd=ROOT, stdin=subprocess.DEVNULL,
                             stdout=log, stderr=subprocess.STDOUT)
            for _ in range(count)
        ]
    return Group(name, port, procs, log_path, listen)


def wait_ready(groups: Sequence[Group], timeout_s: float = 90.0) -> None:
    """Wait until every process of every listening group holds its listening socket
    (the gateway binds only after Redis, PostgreSQL and reference data are set up)."""
    deadline = time.monotonic() + timeout_s
    pending = [g for g in groups if g.listen]
    while pending:
        for group in pending:
            if any(p.poll() is not None for p in group.procs):
                raise BenchError(f"{group.name} exited during start-up; see {group.log_path}:\n"
                                 f"{_tail(group.log_path)}")
        pending = [g for g in pending if not all(listens(p.pid, g.port) for p in g.procs)]
        if pending and time.monotonic() > deadline:
            names = ", ".join(g.name for g in pending)
            raise BenchError(f"{names} did not listen within {timeout_s:.0f}s; see {LOGS_HINT}")
        time.sleep(0.1)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def http_get_json(url: str, timeout_s: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return json.loads(resp.read())


# --- one wrk run ---------------------------------------------------------------------


@dataclass
class WrkRun:
    report: dict[str, Any]
    cpu: dict[str, float]
    wrk_cpu_s: float
    duration_s: float
    command: list[str]

    def accepted(self, statuses: Sequence[int] = (202,)) -> int:
        counts = self.report.get("statuses", {})
        return sum(int(counts.get(str(s), 0)) for s in statuses)

    def summary(self, accepted_statuses: Sequence[int] = (202,)) -> dict[str, Any]:
        lat = self.report.get("latency_us", {})
        errors = self.report.get("errors", {})
        seconds = self.duration_s
        answered = int(self.report.get("requests", 0))
        wrk_cores = self.wrk_cpu_s / seconds if seconds else 0.0
        return {
            "accepted_per_s": round(self.accepted(accepted_statuses) / seconds, 1),
            "answers_per_s": round(answered / seconds, 1),
            "p50_ms": _ms(lat.get("p50")), "p90_ms": _ms(lat.get("p90")),
            "p99_ms": _ms(lat.get("p99")), "p999_ms": _ms(lat.get("p999")),
            "max_ms": _ms(lat.get("max")),
            "statuses": self.report.get("statuses", {}),
            "socket_errors": {k: v for k, v in errors.items() if k != "status" and v},
            "duration_s": round(seconds, 3),
            # CPU of the processes under test per answer: what a request costs them.
            "server_cpu_us_per_answer": (
                round(self.cpu.get("server_cores", 0.0) * seconds / answered * 1e6, 1)
                if answered else None),
            "wrk_cores": round(wrk_cores, 3),
            "wrk_share_of_machine": round(wrk_cores / (os.cpu_count() or 1), 3),
            "cpu": self.cpu,
        }


def _ms(value: Any) -> float | None:
    return None if value is None else round(float(value) / 1000.0, 3)


def run_wrk(
    wrk: str, url: str, *, templates: Path, offset: int, duration_s: float, connections: int,
    threads: int = 1, timeout_s: float = 10.0, watch: Mapping[str, Sequence[int]] = {},
    during: Callable[[], None] | None = None, channel: str = "web",
) -> WrkRun:
    """One wrk run; ``during`` (if given) runs in this thread while wrk is loading."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        report_path = Path(handle.name)
    env = dict(os.environ, BENCH_TEMPLATES=str(templates), BENCH_OFFSET=str(offset),
               BENCH_THREADS=str(threads), BENCH_REPORT=str(report_path), BENCH_CHANNEL=channel)
    seconds_arg = max(1, round(duration_s))  # wrk takes whole seconds
    command = [
        wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds_arg}s",
        "--timeout", f"{timeout_s:g}s", "-s", str(WRK_SCRIPT), f"{url}/v1/registrations",
    ]
    cpu = CpuWatch(watch)
    cpu.start()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            if during is not None:
                during()
        finally:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        usage_s = usage.ru_utime + usage.ru_stime
        used = cpu.stop()
        out.seek(0)
        text = out.read().decode(errors="replace")
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"wrk wrote no report (exit {proc.returncode}):\n{text}") from exc
    finally:
        report_path.unlink(missing_ok=True)
    seconds = float(report.get("duration_us", 0)) / 1e6 or duration_s
    return WrkRun(report, used, usage_s, seconds, command)
