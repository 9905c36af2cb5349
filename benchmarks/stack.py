"""Private Redis and PostgreSQL for one benchmark run, and the databases on them.

Everything runs on servers this run starts (``gateway.devstack``), never on the shared
ones a developer machine may have on 6379/5432: the stall scenarios pause or lock the
database, and the figures must not include other people's traffic on those servers.
Redis runs as production should (AOF, ``appendfsync everysec``, ``noeviction``), without
RDB snapshots so that a fork does not land in the middle of a measurement; PostgreSQL
with the project's development settings (fsync on).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import asyncpg
import redis as redis_py

from gateway import devstack
from gateway.devstack import Service
from gateway.settings import Settings

TEMPLATE_DB = "bench_template"
_T = TypeVar("_T")


def run_async(factory: Callable[[], Awaitable[_T]]) -> _T:
    async def main() -> _T:
        return await factory()

    return asyncio.run(main())


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@dataclass
class Stack:
    redis: Service
    postgres: Service
    databases: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, data_dir: Path) -> Stack:
        redis_dir = data_dir / "redis"
        shutil.rmtree(redis_dir, ignore_errors=True)  # every run starts from an empty Redis
        redis_service = devstack.start_redis(
            redis_dir, appendonly=True, appendfsync="everysec", extra_args=("--save", "")
        )
        try:
            postgres_service = devstack.start_postgres(data_dir / "postgres")
        except BaseException:
            redis_service.stop()
            raise
        stack = cls(redis_service, postgres_service)
        stack._prepare_template()
        return stack

    def stop(self) -> None:
        try:
            run_async(self._drop_databases)
        finally:
            self.postgres.stop()
            self.redis.stop()

    # -- PostgreSQL -------------------------------------------------------------------
    @property
    def admin_url(self) -> str:
        return self.postgres.url

    def database_url(self, name: str) -> str:
        return _with_database(self.postgres.url, name)

    def _prepare_template(self) -> None:
        from gateway.runner import prepare

        async def go() -> None:
            admin = await asyncpg.connect(self.admin_url)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
                await admin.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
            finally:
                await admin.close()
            await prepare(Settings(database_url=self.database_url(TEMPLATE_DB)), dev_sites=True)

        run_async(go)

    def fresh_database(self, name: str) -> str:
        """A new database cloned from the migrated, seeded template."""

        async def go() -> None:
            admin = await asyncpg.connect(self.admin_url)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
            finally:
                await admin.close()

        run_async(go)
        self.databases.append(name)
        return self.database_url(name)

    async def _drop_databases(self) -> None:
        admin = await asyncpg.connect(self.admin_url)
        try:
            for name in [*self.databases, TEMPLATE_DB]:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    def count_rows(self, url: str) -> int:
        async def go() -> int:
            conn = await asyncpg.connect(url)
            try:
                return int(await conn.fetchval("SELECT count(*) FROM registrations"))
            finally:
                await conn.close()

        return run_async(go)

    def postgres_pids(self) -> list[int]:
        return [self.postgres.pid] if self.postgres.pid else []

    def versions(self) -> dict[str, str]:
        async def go() -> str:
            conn = await asyncpg.connect(self.admin_url)
            try:
                return str(await conn.fetchval("SHOW server_version"))
            finally:
                await conn.close()

        info = cast(dict[str, Any], self.client().info("server"))
        return {"redis_server": str(info.get("redis_version")), "postgres_server": run_async(go)}

    # -- Redis ------------------------------------------------------------------------
    def client(self) -> redis_py.Redis:
        return redis_py.Redis.from_url(self.redis.url)

    def command_calls(self) -> dict[str, int]:
        """Calls per command since start (INFO commandstats)."""
        stats = cast(dict[str, Any], self.client().info("commandstats"))
        return {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()
            if isinstance(value, dict) and "calls" in value
        }

    def stream_length(self, prefix: str) -> int:
        client = self.client()
        keys = Settings(key_prefix=prefix).stream_keys()
        return sum(int(cast(int, client.xlen(key))) for key in keys)

    def forget_prefix(self, prefix: str) -> None:
        client = self.client()
        batch: list[bytes] = []
        for key in client.scan_iter(match=prefix + "*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
