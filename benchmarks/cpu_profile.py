"""Section 5: where the CPU goes per request, from a sampling profiler (py-spy).

One gateway process under wrk load is sampled by ``py-spy record --nonblocking`` (the
process is not stopped per sample, so the profiler costs the gateway almost nothing;
``--native`` would need blocking samples, which cut this gateway's throughput tenfold on
2 busy cores). Time in C code (orjson, hiredis, syscalls) is charged to the Python line
that called it. Each sample's stack is put in the first bucket that matches, looking from
the innermost frame outwards:

* parse: the lines of ``gateway/views.py`` (``bare_service.py``) that call
  ``orjson.loads`` on the body;
* validate: ``gateway/validation.py`` and what it calls (phonenumbers, divisions);
* identity: ``gateway/identity.py``, the keyed hashes (HMAC) of identity document, phone
  and Idempotency-Key, and the random token of the registration id;
* append: ``gateway/append.py`` and redis-py / hiredis: building the batch, the round
  trip (socket writes included) and the reply;
* metrics: prometheus_client (counters and histograms per request);
* framework: aiohttp (HTTP parsing, response writing, the event loop callbacks, which
  py-spy shows inside ``run_app``), the rest of the handler and the middleware.

Frames of the standard library (asyncio streams, hmac, random) are not anchors: their
time goes to the nearest caller in a bucket, e.g. a socket write by redis-py to append.

The shares are of busy samples (idle waiting is excluded), and CPU microseconds per
request are those shares times the process's measured CPU time per answered request.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.harness import Group, say
from benchmarks.session import Session

# The lines that parse the body: in the gateway's view, and in the bare service.
PARSERS = (Path(__file__).resolve().parent.parent / "gateway" / "views.py",
           Path(__file__).resolve().parent / "bare_service.py")
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("validate", ("gateway/validation.py", "gateway/divisions.py", "gateway/messages.py",
                  "phonenumbers/")),
    ("identity", ("gateway/identity.py",)),
    ("append", ("gateway/append.py", "redis/", "hiredis")),
    ("metrics", ("prometheus_client/",)),
    ("framework", ("aiohttp/", "multidict/", "yarl/", "gateway/app.py", "gateway/views.py",
                   "bare_service.py")),
)


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


# The writer, sampled with --idle: where its wall-clock time goes. A coroutine waiting
# for PostgreSQL or Redis is suspended and off the stack, so those waits show up as the
# event loop idling ("waiting").
WRITER_BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("decode entries", ("gateway/validation.py", "writer.py:coerce", "coerce (")),
    ("postgres driver", ("asyncpg/", "gateway/store.py")),
    ("redis driver", ("redis/", "gateway/stream.py")),
    ("writer loop", ("gateway/writer.py",)),
)
Buckets = tuple[tuple[str, tuple[str, ...]], ...]


def parse_lines() -> frozenset[str]:
    """``<file>:<line>`` of every line that parses a request body with orjson."""
    return frozenset(
        f"{path.name}:{n}"
        for path in PARSERS
        for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "orjson.loads(" in text
    )


def bucket_of(stack: list[str], parse_at: frozenset[str] = frozenset(),
              buckets: Buckets = BUCKETS, default: str = "other") -> str:
    for frame in reversed(stack):  # innermost first
        where = frame.rpartition("/")[2].rstrip(")")
        if where in parse_at:
            return "parse"
        for name, needles in buckets:
            if any(n in frame for n in needles):
                return name
    return default


def categorise(collapsed: str, buckets_: Buckets = BUCKETS,
               default: str = "other") -> tuple[Counter[str], Counter[str]]:
    """Samples per bucket, and samples per innermost Python function (self time)."""
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    parse_at = parse_lines() if buckets_ is BUCKETS else frozenset()
    for line in collapsed.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        stack = stack_text.split(";")
        buckets[bucket_of(stack, parse_at, buckets_, default)] += count
        leaves[_short(stack[-1])] += count
    return buckets, leaves


def _short(frame: str) -> str:
    """'validate (/x/site-packages/gateway/validation.py:241)' -> 'validate (gateway/validation.py)'."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})" if where else name


class Recorder:
    """``py-spy record`` on one process until :meth:`stop` (SIGINT makes it write)."""

    def __init__(self, pid: int, out: Path, *, idle: bool) -> None:
        spy = py_spy()
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        if spy is not None:
            argv = [spy, "record", "--pid", str(pid), "--rate", "100", "--nonblocking",
                    "--format", "raw", "--output", str(out), "--duration", "3600"]
            self.proc = subprocess.Popen([*argv, *(["--idle"] if idle else [])],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> Path | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.out if self.out.exists() else None


def writer_shares(collapsed: str) -> dict[str, Any]:
    buckets, leaves = categorise(collapsed, WRITER_BUCKETS, default="waiting")
    total = sum(buckets.values()) or 1
    return {
        "tool": "py-spy record --idle --nonblocking --rate 100 (wall-clock samples)",
        "samples": total,
        "shares": {k: round(v / total, 3) for k, v in buckets.most_common()},
        "top": [{"frame": f, "share": round(n / total, 3)} for f, n in leaves.most_common(12)],
    }


def _profiled_run(session: Session, spy: str, group: Group, label: str) -> dict[str, Any]:
    out = session.config.out_dir / f"profile-{label}.txt"
    out.unlink(missing_ok=True)
    seconds = max(int(session.config.duration_s) - 1, 1)
    stderr: list[str] = []

    def during() -> None:
        done = subprocess.run(
            [spy, "record", "--pid", str(group.pids[0]), "--duration", str(seconds),
             "--rate", "200", "--nonblocking", "--format", "raw", "--output", str(out)],
            capture_output=True, text=True, check=False)
        stderr.append(done.stderr)

    say(f"profile  {label} 1p under py-spy")
    run_ = session.load(group, during=during)
    if not out.exists():
        return {"error": f"py-spy wrote no profile: {''.join(stderr)[-500:]}"}
    buckets, leaves = categorise(out.read_text())
    busy = sum(buckets.values()) or 1
    answered = int(run_.report.get("requests", 0))
    cpu_s = run_.cpu.get("server_cores", 0.0) * run_.duration_s
    us_per_request = cpu_s / answered * 1e6 if answered else None
    shares = {k: round(v / busy, 3) for k, v in buckets.most_common()}
    return {
        "tool": "py-spy record --nonblocking --rate 200",
        "samples": busy,
        "load": run_.summary(),
        "cpu_us_per_request": round(us_per_request, 1) if us_per_request else None,
        "shares": shares,
        "us_per_request": ({k: round(v * us_per_request, 1) for k, v in shares.items()}
                           if us_per_request else None),
        "top_self": [{"frame": f, "share": round(n / busy, 3)} for f, n in leaves.most_common(25)],
        "collapsed_stacks": out.name,
    }


def run(session: Session) -> dict[str, Any]:
    """The gateway, and (not with --quick) the bare aiohttp service for the framework's
    own share, both one process under the same load, one after the other."""
    spy = py_spy()
    if spy is None:
        return {"error": "py-spy not installed (pip install py-spy)"}
    db = session.stack.fresh_database("bench_profile")
    groups = [session.start_gateway(1, "bench:profile:", db)]
    if not session.config.quick:
        groups.append(session.start_bare(1))
    try:
        session.ready(*groups)
        result = _profiled_run(session, spy, groups[0], "gateway")
        if len(groups) > 1:
            result["bare"] = _profiled_run(session, spy, groups[1], "bare")
    finally:
        session.stop(*groups)
        session.stack.forget_prefix("bench:profile:")
    return result
