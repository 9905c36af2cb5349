"""Real ``python -m gateway serve|writer`` processes for tests that need a real server:
slow clients, raw sockets, memory of the process, logs written by the process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import aiohttp

from gateway.devstack import free_port
from gateway.settings import Settings


def process_env(settings: Settings, port: int, **overrides: str) -> dict[str, str]:
    """The environment that makes a child process use this test's Redis keys and database."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GATEWAY_", "PG")) and k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(
        REDIS_URL=settings.redis_url,
        DATABASE_URL=settings.database_url,
        GATEWAY_KEY_PREFIX=settings.key_prefix,
        GATEWAY_HOST="127.0.0.1",
        GATEWAY_PORT=str(port),
        GATEWAY_WRITER_METRICS_PORT="0",
        GATEWAY_REFERENCE_REFRESH_S="1",
        GATEWAY_WRITER_BLOCK_MS="100",
    )
    env.update(overrides)
    return env


class LiveProcess:
    def __init__(self, command: str, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", command], env=env, stdout=self._log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self, grace_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class LiveGateway(LiveProcess):
    def __init__(self, settings: Settings, log_path: Path, **env: str) -> None:
        self.port = free_port()
        super().__init__("serve", process_env(settings, self.port, **env), log_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise AssertionError(f"gateway exited early; see {self.log_path}")
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    async with session.get(self.url + "/readyz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise AssertionError(f"gateway not ready in {timeout_s:.0f}s; see {self.log_path}")


async def start_gateway(settings: Settings, log_path: Path, **env: str) -> LiveGateway:
    gateway = LiveGateway(settings, log_path, **env)
    try:
        await gateway.wait_ready()
    except BaseException:
        gateway.stop()
        raise
    return gateway


def start_writer(settings: Settings, log_path: Path, **env: str) -> LiveProcess:
    return LiveProcess("writer", process_env(settings, free_port(), **env), log_path)
