"""Process commands: ``run`` (the whole stack), ``serve``, ``writer``, ``migrate``,
``sites import``.

``serve --workers N`` starts N processes that share one port with SO_REUSEPORT; the
kernel spreads connections among them. ``writer --processes N`` starts N consumers in the
same group. ``run`` finds or starts Redis and PostgreSQL, migrates, seeds, starts both,
and on Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from gateway import logs
from gateway.settings import Settings

log = logging.getLogger(__name__)


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    changes: dict[str, Any] = {}
    for name in ("host", "port", "workers", "writers"):
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    return settings.with_changes(**changes) if changes else settings


def _use_uvloop() -> None:
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# -- serve --------------------------------------------------------------------------
def serve_one(settings: Settings) -> None:
    from aiohttp import web

    from gateway.app import create_app

    logs.setup(settings.log_level)
    _use_uvloop()
    app = create_app(settings)
    app.on_startup.append(_drain_on_signals)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        reuse_port=True,
        shutdown_timeout=settings.shutdown_grace_s,
        # aiohttp's keep-alive timer also runs from the moment a connection opens and
        # closes it if no complete request head has arrived: it is the header timeout
        # against clients that send their headers a byte at a time.
        keepalive_timeout=settings.header_timeout_s,
        access_log=None,
        print=None,
        handle_signals=False,  # _drain_on_signals: drain first, then aiohttp's shutdown
    )


async def _drain_on_signals(app: Any) -> None:
    """SIGTERM/SIGINT: drain (admitted requests finish, new ones get 503), then exit."""
    from aiohttp.web_runner import GracefulExit

    from gateway.app import RUNTIME, drain

    loop = asyncio.get_running_loop()
    settings = app[RUNTIME].settings
    started: list[asyncio.Task[None]] = []

    async def drain_then_exit() -> None:
        await drain(app, settings.shutdown_grace_s)
        loop.call_soon(_raise, GracefulExit())

    def on_signal() -> None:
        if not started:
            started.append(loop.create_task(drain_then_exit()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)


def _raise(exc: BaseException) -> None:
    raise exc


def _serve_worker(settings: Settings) -> None:
    try:
        serve_one(settings)
    except KeyboardInterrupt:
        pass


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings.workers <= 1:
        log_ready(settings)
        serve_one(settings)
        return 0
    return _supervise([(_serve_worker, settings)] * settings.workers, "gateway", settings)


def log_ready(settings: Settings) -> None:
    print(f"gateway listening on http://{settings.host}:{settings.port}", flush=True)


# -- writer -------------------------------------------------------------------------
def writer_one(settings: Settings) -> None:
    from gateway.writer import run_writer

    logs.setup(settings.log_level)
    _use_uvloop()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_writer(settings, stop)

    asyncio.run(main())


def cmd_writer(args: argparse.Namespace) -> int:
    settings = _settings(args)
    processes = args.processes or settings.writers
    if processes <= 1:
        writer_one(settings)
        return 0
    return _supervise([(writer_one, settings)] * processes, "writer", settings)


_PR_SET_PDEATHSIG = 1


def _supervised(fn: Any, settings: Settings, parent: int) -> None:
    """A supervised process: it must not outlive a supervisor that was killed outright."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        return
    fn(settings)


def _supervise(targets: list[tuple[Any, Settings]], label: str, settings: Settings) -> int:
    """Run each target in its own process; stop all when one dies or on a signal."""
    metrics_dir, made_dir = _metrics_dir(label)
    ctx = multiprocessing.get_context("spawn")
    parent = os.getpid()
    procs = [
        ctx.Process(target=_supervised, args=(fn, cfg, parent), name=f"{label}-{i}")
        for i, (fn, cfg) in enumerate(targets)
    ]
    for proc in procs:
        proc.start()
    if label == "gateway":
        log_ready(settings)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    while not stopping:
        if any(not p.is_alive() for p in procs):
            code = 1
            break
        time.sleep(0.2)
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + settings.shutdown_grace_s + 5
    for proc in procs:
        proc.join(max(deadline - time.monotonic(), 0.1))
        if proc.is_alive():
            proc.kill()
            proc.join()
    _release_metrics_dir(metrics_dir, made_dir, [p.pid for p in procs if p.pid is not None])
    return code


def _metrics_dir(label: str) -> tuple[Path, bool]:
    """Where processes behind one port keep their metrics so that any of them can answer
    /metrics for all (prometheus_client multiprocess mode): PROMETHEUS_MULTIPROC_DIR, or
    a new temporary directory. Emptied first: files of an earlier run would be counted."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix=f"gateway-{label}-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)  # inherited by the spawned children
    return path, not given


def _release_metrics_dir(path: Path, made: bool, pids: list[int]) -> None:
    if made:
        shutil.rmtree(path, ignore_errors=True)
        return
    from prometheus_client.multiprocess import mark_process_dead

    for pid in pids:
        mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


# -- migrate / seed -----------------------------------------------------------------
async def prepare(settings: Settings, *, dev_sites: bool, priority_groups: str | None = None) -> dict[str, int]:
    """Migrate, load the priority groups, and load the development sites into an empty
    sites table (never over an operator's own list)."""
    from gateway.store import Store

    store = await Store.open(settings)
    try:
        text = (
            Path(priority_groups).read_text(encoding="utf-8")
            if priority_groups
            else resources.files("gateway.data").joinpath("priority_groups.csv").read_text(encoding="utf-8")
        )
        groups = await store.import_priority_groups(text)
        sites = 0
        if dev_sites and await store.count_sites() == 0:
            sites = await store.import_sites(
                resources.files("gateway.data").joinpath("sites_dev.csv").read_text(encoding="utf-8")
            )
        return {"priority_groups": groups, "sites_loaded": sites}
    finally:
        await store.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    logs.setup(settings.log_level)
    result = asyncio.run(prepare(settings, dev_sites=args.dev_sites, priority_groups=args.priority_groups))
    print(f"migrated; {result['priority_groups']} priority groups, {result['sites_loaded']} sites loaded")
    return 0


def cmd_sites_import(args: argparse.Namespace) -> int:
    from gateway.store import Store

    settings = Settings.from_env()

    async def go() -> int:
        store = await Store.open(settings)
        try:
            return await store.import_sites(Path(args.file).read_text(encoding="utf-8"))
        finally:
            await store.close()

    count = asyncio.run(go())
    print(f"{count} sites imported (gateways pick them up within {settings.reference_refresh_s:.0f}s)")
    return 0


# -- run: the whole stack ------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from gateway import devstack

    logs.setup(os.environ.get("GATEWAY_LOG_LEVEL", "INFO"))
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    services: list[Any] = []
    children: list[subprocess.Popen[bytes]] = []
    try:
        redis = devstack.ensure_redis(data_dir)
        services.append(redis)
        postgres = devstack.ensure_postgres(data_dir)
        services.append(postgres)
        env = dict(os.environ, REDIS_URL=redis.url, DATABASE_URL=postgres.url)
        settings = Settings.from_env(env)
        if args.port is not None:
            settings = settings.with_changes(port=args.port)
            env["GATEWAY_PORT"] = str(args.port)
        seeded = asyncio.run(prepare(settings, dev_sites=not settings.production))
        write_stack_env(data_dir, redis.url, postgres.url, f"http://{settings.host}:{settings.port}")
        workers = str(args.workers or settings.workers)
        writers = str(args.writers or settings.writers)
        cmd = [sys.executable, "-m", "gateway"]
        metrics_root = data_dir / "metrics"  # one fresh directory per process group
        shutil.rmtree(metrics_root, ignore_errors=True)
        for group in ("gateway", "writer"):
            (metrics_root / group).mkdir(parents=True)
        # If this command is killed outright, its children must not outlive it.
        orphan_guard = devstack.die_with_parent(signal.SIGTERM)
        children.append(subprocess.Popen(
            [*cmd, "serve", "--workers", workers],
            env=dict(env, PROMETHEUS_MULTIPROC_DIR=str(metrics_root / "gateway")),
            preexec_fn=orphan_guard,  # noqa: PLW1509 (main thread)
        ))
        children.append(subprocess.Popen(
            [*cmd, "writer", "--processes", writers],
            env=dict(env, PROMETHEUS_MULTIPROC_DIR=str(metrics_root / "writer")),
            preexec_fn=orphan_guard,  # noqa: PLW1509 (main thread)
        ))
        if not _wait_http(settings.host, settings.port, children):
            print("the gateway did not come up; see the log above", file=sys.stderr)
            return 1
        print(
            f"\nIntake gateway ready: http://{settings.host}:{settings.port}/v1/registrations\n"
            f"  redis {redis.url} ({redis.source}), postgres {_mask(postgres.url)} ({postgres.source})\n"
            f"  {workers} gateway process(es), {writers} writer process(es); "
            f"{seeded['sites_loaded']} development sites loaded\n"
            f"  try: gateway demo --count 5000 --url http://{settings.host}:{settings.port}\n"
            "Ctrl-C stops everything this command started.\n",
            flush=True,
        )
        return _wait_children(children)
    except KeyboardInterrupt:
        return 0
    finally:
        _stop_children(children, grace_s=15)
        for service in reversed(services):
            service.stop()
        shutil.rmtree(data_dir / "metrics", ignore_errors=True)
        (data_dir / STACK_ENV).unlink(missing_ok=True)


STACK_ENV = "stack.env"


def write_stack_env(data_dir: Path, redis_url: str, database_url: str, gateway_url: str) -> None:
    """Where the running stack is, for ``gateway demo`` / ``status`` in another terminal."""
    path = data_dir / STACK_ENV
    path.write_text(
        f"REDIS_URL={redis_url}\nDATABASE_URL={database_url}\nGATEWAY_URL={gateway_url}\n",
        encoding="utf-8",
    )
    path.chmod(0o600)


def read_stack_env(data_dir: Path | str = ".data") -> dict[str, str]:
    """The running stack's addresses written by ``gateway run`` (empty when none)."""
    path = Path(data_dir) / STACK_ENV
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text(encoding="utf-8").splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def apply_stack_env(data_dir: Path | str = ".data") -> dict[str, str]:
    """Fill REDIS_URL / DATABASE_URL from a running ``gateway run`` when they are unset."""
    found = read_stack_env(data_dir)
    for key in ("REDIS_URL", "DATABASE_URL"):
        if found.get(key) and not os.environ.get(key):
            os.environ[key] = found[key]
    return found


def _mask(url: str) -> str:
    from gateway.settings import _mask_url

    return _mask_url(url)


def _wait_http(host: str, port: int, children: list[subprocess.Popen[bytes]], timeout_s: float = 60) -> bool:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(child.poll() is not None for child in children):
            return False
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def _wait_children(children: list[subprocess.Popen[bytes]]) -> int:
    stop = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stop:
        for child in children:
            if child.poll() is not None:
                print(f"a child process exited with {child.returncode}; stopping", file=sys.stderr)
                return 1
        time.sleep(0.3)
    return 0


def _stop_children(children: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def add_commands(sub: Any) -> None:
    p = sub.add_parser("run", help="find or start Redis and PostgreSQL, then run gateway + writer")
    p.add_argument("--data-dir", default=".data", help="where private servers keep their data")
    p.add_argument("--workers", type=int, help="gateway processes (GATEWAY_WORKERS)")
    p.add_argument("--writers", type=int, help="writer processes (GATEWAY_WRITERS)")
    p.add_argument("--port", type=int, help="HTTP port (GATEWAY_PORT)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("serve", help="run the HTTP gateway")
    p.add_argument("--workers", type=int, help="processes sharing the port (SO_REUSEPORT)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("writer", help="drain the intake streams into PostgreSQL")
    p.add_argument("--processes", type=int, default=0, help="writer processes (GATEWAY_WRITERS)")
    p.set_defaults(func=cmd_writer)

    p = sub.add_parser("migrate", help="apply schema migrations and load reference data")
    p.add_argument("--dev-sites", action="store_true", help="load the development sites into an empty table")
    p.add_argument("--priority-groups", help="CSV of priority groups (default: the packaged list)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("sites", help="vaccination sites")
    sites = p.add_subparsers(dest="sites_command", required=True)
    q = sites.add_parser("import", help="import or update sites from a CSV file")
    q.add_argument("file", help="CSV: site_id,name,province_code,ward_code,address,daily_capacity[,active]")
    q.set_defaults(func=cmd_sites_import)
