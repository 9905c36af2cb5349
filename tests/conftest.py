"""Shared fixtures: real Redis and PostgreSQL, isolated per test.

Servers come from ``REDIS_URL`` / ``DATABASE_URL`` when set, else private ones are
started for the session (``gateway.devstack``). Each test gets its own Redis key prefix
and its own database cloned from a migrated template, and both are removed afterwards.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from gateway.settings import Settings

TEMPLATE_DB = f"gw_template_{os.getpid()}"


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    started: list[Any] = []
    redis_url = os.environ.get("REDIS_URL", "")
    pg_url = os.environ.get("DATABASE_URL", "")
    if not redis_url or not pg_url:
        from gateway import devstack

        root = tmp_path_factory.mktemp("servers")
        if not redis_url:
            svc = devstack.start_redis(Path(root) / "redis")
            started.append(svc)
            redis_url = svc.url
        if not pg_url:
            svc = devstack.start_postgres(Path(root) / "postgres")
            started.append(svc)
            pg_url = svc.url
    yield {"redis": redis_url, "postgres": pg_url}
    for svc in reversed(started):
        svc.stop()


@pytest.fixture(scope="session")
async def template_database(servers: dict[str, str]) -> AsyncIterator[str]:
    """A database migrated and seeded once; tests clone it (fast, isolated)."""
    from gateway.runner import prepare

    admin = await asyncpg.connect(servers["postgres"])
    await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
    await admin.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    url = _with_database(servers["postgres"], TEMPLATE_DB)
    await prepare(Settings(database_url=url), dev_sites=True)
    yield TEMPLATE_DB
    await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
    await admin.close()


@pytest.fixture
async def database_url(servers: dict[str, str], template_database: str) -> AsyncIterator[str]:
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(servers["postgres"])
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
        yield _with_database(servers["postgres"], name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def settings(servers: dict[str, str], database_url: str) -> AsyncIterator[Settings]:
    prefix = f"test:{uuid.uuid4().hex[:10]}:"
    s = Settings(
        redis_url=servers["redis"],
        database_url=database_url,
        key_prefix=prefix,
        writer_block_ms=100,
        claim_idle_ms=500,
        claim_interval_s=0.2,
        reference_refresh_s=1.0,
    )
    yield s
    r = aioredis.Redis.from_url(servers["redis"])
    try:
        keys = [k async for k in r.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await r.delete(*keys)
    finally:
        await r.aclose()


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(settings.redis_url)
    yield r
    await r.aclose()


@pytest.fixture
async def pg(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(settings.database_url)
    yield conn
    await conn.close()


async def make_client(settings: Settings) -> TestClient[Any, Any]:
    from gateway.app import create_app

    client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    return client


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    c = await make_client(settings)
    yield c
    await c.close()


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll an async predicate until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
