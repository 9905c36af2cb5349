"""redis-py versions and batching, measured with the same append loop.

Two halves in one file:

* ``python redis_clients.py loop --url ... --seconds ...`` is the loop itself. It needs
  only redis (with hiredis), orjson and uvloop, so it runs in throwaway virtual
  environments holding one redis-py version each. Modes, all against ``append.lua``'s
  real script or the same stream:

  - ``xadd_per_call``: 64 coroutines, one ``XADD`` each per await (one redis-py command
    per registration, what a handler calling redis-py directly costs);
  - ``evalsha_per_registration``: 64 coroutines, one ``EVALSHA`` of ``append.lua`` per
    registration (the gateway without coalescing);
  - ``evalsha_coalesced_<n>``: one ``EVALSHA`` carrying n registrations, one in flight at
    a time (what the appender does under load);
  - ``pipeline_xadd_64``: 64 ``XADD`` per pipeline round trip.

* :func:`run` (used by ``run.py``) builds those environments (cached under the data
  directory), runs the loop in each and in the project's own environment, and reports
  appended registrations per second per version and mode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
APPEND_LUA = HERE.parent / "gateway" / "lua" / "append.lua"
CONCURRENCY = 64
PAYLOAD = b'{"full_name":"Nguy\\u1ec5n V\\u0103n A","date_of_birth":"1960-01-01"' + b' ' * 380 + b"}"


# --- the loop (standalone: no gateway, no benchmarks imports) ---------------------


async def _loop(url: str, seconds: float, prefix: str) -> dict[str, Any]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, max_connections=CONCURRENCY + 8)
    script = client.register_script(APPEND_LUA.read_text())
    stream = f"{prefix}intake:{{0}}"
    counter = 0

    def registration() -> tuple[str, list[Any]]:
        nonlocal counter
        counter += 1
        return (f"{prefix}dedupe:{{0}}:{counter:032x}",
                [f"fp{counter:022d}", f"ph{counter:014d}", "", f"tok{counter:07d}",
                 "2021-07-08T08:00:00.000+00:00", PAYLOAD])

    async def timed(worker: Any, workers: int) -> float:
        done = 0
        deadline = time.perf_counter() + seconds

        async def one() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                appended = await worker()  # not `done += await ...`: that loses updates
                done += appended

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(workers)))
        return round(done / (time.perf_counter() - started), 1)

    async def xadd() -> int:
        await client.xadd(stream, {"p": PAYLOAD})
        return 1

    async def evalsha(n: int) -> int:
        keys, argv = [stream], [86400, 0]
        for _ in range(n):
            key, args = registration()
            keys.append(key)
            argv.extend(args)
        await script(keys=keys, args=argv)
        return n

    async def pipelined() -> int:
        pipe = client.pipeline(transaction=False)
        for _ in range(64):
            pipe.xadd(stream, {"p": PAYLOAD})
        await pipe.execute()
        return 64

    await evalsha(1)  # load the script once
    modes = {
        "xadd_per_call": await timed(xadd, CONCURRENCY),
        "evalsha_per_registration": await timed(lambda: evalsha(1), CONCURRENCY),
        "evalsha_coalesced_16": await timed(lambda: evalsha(16), 1),
        "evalsha_coalesced_64": await timed(lambda: evalsha(64), 1),
        "pipeline_xadd_64": await timed(pipelined, 1),
    }
    keys = [k async for k in client.scan_iter(match=prefix + "*", count=5000)]
    for i in range(0, len(keys), 5000):
        await client.unlink(*keys[i:i + 5000])
    await client.aclose()
    return modes


def _versions() -> dict[str, str]:
    from importlib import metadata

    import redis

    found = {"python": sys.version.split()[0], "redis_py": redis.__version__}
    for dist in ("hiredis", "uvloop", "orjson"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "absent"
    from redis.utils import HIREDIS_AVAILABLE

    found["hiredis_parser"] = str(bool(HIREDIS_AVAILABLE))
    return found


def loop_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--prefix", default="bench:clients:")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    modes = asyncio.run(_loop(args.url, args.seconds, args.prefix))
    print(json.dumps({"versions": _versions(), "appended_per_s": modes}))
    return 0


# --- the driver -------------------------------------------------------------------


def _venv(base: Path, version: str) -> Path:
    """A cached venv with redis[hiredis]==version, orjson and uvloop."""
    path = base / f"redis-{version}"
    python = path / "bin" / "python"
    stamp = path / ".ready"
    if stamp.exists() and python.exists():
        return python
    from benchmarks.harness import say

    say(f"building a throwaway venv with redis=={version}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    f"redis[hiredis]=={version}", "orjson", "uvloop"], check=True,
                   stdin=subprocess.DEVNULL)
    stamp.write_text(version)
    return python


def _measure(python: str, url: str, seconds: float, prefix: str) -> dict[str, Any]:
    done = subprocess.run([python, str(Path(__file__).resolve()), "loop", "--url", url,
                           "--seconds", str(seconds), "--prefix", prefix],
                          check=True, capture_output=True, text=True, env=_clean_env())
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run(session: Any) -> dict[str, Any]:
    """Each interpreter runs the loop ``rounds`` times, interleaved with the others; the
    best figure per mode is kept (on a shared machine, other tenants only slow a loop
    down, so the best round is the closest to what the client itself costs)."""
    from benchmarks.harness import say

    cfg = session.config
    url = session.stack.redis.url
    pythons: list[tuple[str, str]] = [("project venv", sys.executable)]
    errors: list[dict[str, Any]] = []
    for version in cfg.redis_versions:
        try:
            pythons.append((f"redis {version}", str(_venv(cfg.data_dir / "venvs", version))))
        except subprocess.CalledProcessError as exc:
            errors.append({"label": f"redis {version}", "error": str(exc)})
    rounds = 1 if cfg.quick else 3
    best: dict[str, dict[str, Any]] = {}
    for round_ in range(rounds):
        for label, python in pythons:
            say(f"clients  {label}, round {round_ + 1} of {rounds}")
            measured = _measure(python, url, cfg.loop_seconds, f"bench:clients:{len(best)}:")
            kept = best.setdefault(label, {"label": label, "versions": measured["versions"],
                                           "appended_per_s": {}, "rounds": []})
            kept["rounds"].append(measured["appended_per_s"])
            for mode, value in measured["appended_per_s"].items():
                kept["appended_per_s"][mode] = max(kept["appended_per_s"].get(mode, 0), value)
    results = list(best.values())
    project = results[0]
    project["label"] = f"project venv (redis {project['versions']['redis_py']})"
    results += errors
    return {"loop_seconds": cfg.loop_seconds, "concurrency": CONCURRENCY, "rounds": rounds,
            "statistic": "best round per mode", "results": results,
            "summary": summarise(results)}


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in results if "appended_per_s" in r]
    out: dict[str, Any] = {}
    if ok:
        first = ok[0]["appended_per_s"]
        out["coalesced_64_vs_per_registration"] = _ratio(
            first["evalsha_coalesced_64"], first["evalsha_per_registration"])
    by_major = {r["versions"]["redis_py"].split(".")[0]: r["appended_per_s"]
                for r in ok if r["label"].startswith("redis ")}
    if "5" in by_major and "8" in by_major:
        out["redis5_vs_redis8"] = {
            mode: _ratio(by_major["5"][mode], by_major["8"][mode]) for mode in by_major["5"]
        }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "loop":
        sys.exit(loop_main(sys.argv[2:]))
    sys.exit("usage: redis_clients.py loop --url redis://... [--seconds N]")
