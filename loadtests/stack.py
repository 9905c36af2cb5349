"""The system under test: a deployment given by URL, or a private one started here.

A private stack is what a capacity planner measures on one machine: its own Redis (AOF
``everysec``, the production default) and PostgreSQL from :mod:`gateway.devstack` in a
temporary directory, ``gateway migrate --dev-sites``, ``gateway serve --workers N`` and
``gateway writer --processes M`` as child processes. Everything is stopped and removed
at the end. Process ids are kept so the sampler can charge CPU time to each role.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 90.0


@dataclass
class Stack:
    url: str  # the gateway, e.g. http://127.0.0.1:8080
    redis_url: str  # "" when unknown (a remote deployment): sampled through /readyz only
    database_url: str  # "" when unknown: reconciliation is impossible
    key_prefix: str = ""
    private: bool = False
    roles: dict[str, list[int]] = field(default_factory=dict)  # role -> root pids
    _children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)
    _services: list[Any] = field(default_factory=list, repr=False)
    _work_dir: Path | None = field(default=None, repr=False)
    writers: int = 1
    _env: dict[str, str] = field(default_factory=dict, repr=False)
    _log_dir: Path | None = field(default=None, repr=False)

    def _start(self, role: str, argv: list[str]) -> None:
        assert self._log_dir is not None
        with (self._log_dir / f"{role}.log").open("ab") as out:
            child = subprocess.Popen(
                [sys.executable, "-m", "gateway", *argv],
                env=self._env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._children[role] = child
        self.roles[role] = [child.pid]

    def start_writer(self) -> None:
        """Start the writer processes (a run may hold them back to build a backlog)."""
        if self.private and "writer" not in self._children:
            self._start("writer", ["writer", "--processes", str(self.writers)])

    def stop(self) -> None:
        for role in ("gateway", "writer"):
            _terminate(self._children.pop(role, None), grace_s=20)
        for service in reversed(self._services):
            try:
                service.stop()
            except Exception as exc:  # noqa: BLE001 - keep tearing down
                log.warning("could not stop %s: %s", getattr(service, "name", "?"), exc)
        self._services.clear()
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None

    def child_alive(self, role: str) -> bool:
        child = self._children.get(role)
        return child is not None and child.poll() is None


def external(url: str, redis_url: str, database_url: str, key_prefix: str = "") -> Stack:
    return Stack(url.rstrip("/"), redis_url, database_url, key_prefix)


def start_private(
    *,
    gateway_workers: int,
    writers: int,
    port: int | None,
    log_dir: Path,
    environment: dict[str, str] | None = None,
    start_writer: bool = True,
) -> Stack:
    """Start Redis, PostgreSQL, migrate and seed, then the gateway and (unless told not
    to: see :meth:`Stack.start_writer`) the writer."""
    from gateway import devstack

    work_dir = Path(tempfile.mkdtemp(prefix="loadtest-stack-"))
    stack = Stack("", "", "", private=True, _work_dir=work_dir)
    try:
        redis = devstack.start_redis(work_dir / "redis", appendonly=True, appendfsync="everysec")
        stack._services.append(redis)
        postgres = devstack.start_postgres(work_dir / "postgres")
        stack._services.append(postgres)
        http_port = port or devstack.free_port()
        env = {
            **os.environ,
            **(environment or {}),
            "REDIS_URL": redis.url,
            "DATABASE_URL": postgres.url,
            "GATEWAY_PORT": str(http_port),
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_LOG_LEVEL": os.environ.get("GATEWAY_LOG_LEVEL", "WARNING"),
        }
        env.pop("GATEWAY_KEY_PREFIX", None)
        stack.url, stack.redis_url, stack.database_url = (
            f"http://127.0.0.1:{http_port}",
            redis.url,
            postgres.url,
        )
        subprocess.run(
            [sys.executable, "-m", "gateway", "migrate", "--dev-sites"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=120,
        )
        stack._env, stack._log_dir = env, log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        stack.roles = {
            "redis": [redis.pid] if redis.pid else [],
            "postgres": [postgres.pid] if postgres.pid else [],
        }
        stack._start("gateway", ["serve", "--workers", str(gateway_workers)])
        stack.writers = writers
        if start_writer:
            stack.start_writer()
        wait_ready(stack)
        return stack
    except BaseException:
        stack.stop()
        raise


def wait_ready(stack: Stack, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        for role in ("gateway", "writer"):
            child = stack._children.get(role)
            if child is not None and child.poll() is not None:
                raise RuntimeError(f"the {role} exited with {child.returncode} during start-up")
        try:
            with urllib.request.urlopen(stack.url + "/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError as exc:
            last = type(exc).__name__
        time.sleep(0.3)
    raise RuntimeError(f"{stack.url} was not ready within {timeout_s:.0f}s ({last})")


def _terminate(child: subprocess.Popen[bytes] | None, grace_s: float) -> None:
    if child is None or child.poll() is not None:
        return
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
