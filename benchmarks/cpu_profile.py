"""Section 5: where the CPU goes per request, from a sampling profiler (py-spy).

One gateway process under wrk load is sampled by ``py-spy record --nonblocking`` (the
process is not stopped per sample, so the profiler costs the gateway almost nothing;
``--native`` would need blocking samples, which cut this gateway's throughput tenfold on
2 busy cores). Time in C code (orjson, hiredis, syscalls) is charged to the Python line
that called it. Each sample's stack is put in the first bucket that matches, looking from
the innermost frame outwards:

* parse: the lines of ``gateway/views.py`` that call ``orjson.loads`` on the body;
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
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.harness import say
from benchmarks.session import Session

VIEWS = Path(__file__).resolve().parent.parent / "gateway" / "views.py"
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("validate", ("gateway/validation.py", "gateway/divisions.py", "gateway/messages.py",
                  "phonenumbers/")),
    ("identity", ("gateway/identity.py",)),
    ("append", ("gateway/append.py", "redis/", "hiredis")),
    ("metrics", ("prometheus_client/",)),
    ("framework", ("aiohttp/", "multidict/", "yarl/", "gateway/app.py", "gateway/views.py")),
)


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


def parse_lines() -> frozenset[str]:
    """``views.py:<line>`` of every line that parses a body with orjson."""
    lines = VIEWS.read_text(encoding="utf-8").splitlines()
    return frozenset(f"views.py:{n}" for n, text in enumerate(lines, 1) if "orjson.loads(" in text)


def bucket_of(stack: list[str], parse_at: frozenset[str] = frozenset()) -> str:
    for frame in reversed(stack):  # innermost first
        where = frame.rpartition("/")[2].rstrip(")")
        if where in parse_at:
            return "parse"
        for name, needles in BUCKETS:
            if any(n in frame for n in needles):
                return name
    return "other"


def categorise(collapsed: str) -> tuple[Counter[str], Counter[str]]:
    """Samples per bucket, and samples per innermost Python function (self time)."""
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    parse_at = parse_lines()
    for line in collapsed.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        stack = stack_text.split(";")
        buckets[bucket_of(stack, parse_at)] += count
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


def run(session: Session) -> dict[str, Any]:
    spy = py_spy()
    if spy is None:
        return {"error": "py-spy not installed (pip install py-spy)"}
    cfg = session.config
    db = session.stack.fresh_database("bench_profile")
    gateway = session.start_gateway(1, "bench:profile:", db)
    out = cfg.out_dir / "profile-gateway.txt"
    seconds = max(int(cfg.duration_s) - 1, 1)
    proc_box: list[subprocess.CompletedProcess[str]] = []

    def during() -> None:
        proc_box.append(subprocess.run(
            [spy, "record", "--pid", str(gateway.pids[0]), "--duration", str(seconds),
             "--rate", "200", "--nonblocking", "--format", "raw",
             "--output", str(out)],
            capture_output=True, text=True, check=False))

    try:
        session.ready(gateway)
        say("profile  gateway 1p under py-spy")
        run_ = session.load(gateway, during=during)
    finally:
        session.stop(gateway)
        session.stack.forget_prefix("bench:profile:")
    if not out.exists():
        detail = proc_box[0].stderr[-500:] if proc_box else "py-spy did not run"
        return {"error": f"py-spy wrote no profile: {detail}"}
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
