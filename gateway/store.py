"""PostgreSQL adapter: pool, migrations, bulk upsert, dead letters, reference data.

The only module that imports ``asyncpg``. Driver errors leave it as
:class:`DependencyUnavailable` (try again later) or :class:`DataError` (this data cannot
be stored as it is); nothing else.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg
import orjson

from gateway import constants as c
from gateway.exceptions import DataError, DependencyUnavailable
from gateway.settings import Settings

log = logging.getLogger(__name__)

MIGRATION_LOCK_ID = 0x1A7A6E  # pg_advisory_lock key shared by every migrating process
_MIGRATION_FILE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")

COLUMNS = (
    "registration_id", "identity_key", "id_type", "id_number", "full_name", "date_of_birth",
    "gender", "phone", "email", "health_insurance_number", "province_code", "ward_code",
    "street", "priority_group", "occupation", "site_id", "preferred_date",
    "preferred_session", "screening", "channel", "received_at",
)

# Errors that say "the server is not there or not taking work now": retry later.
_OUTAGE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.QueryCanceledError,  # statement_timeout: a lock held too long
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)


def _queries() -> dict[str, str]:
    text = resources.files("gateway.sql").joinpath("queries.sql").read_text(encoding="utf-8")
    named: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        named[name.strip()] = body.strip().rstrip(";")
    return named


Q = _queries()


def translate(exc: BaseException) -> Exception:
    """Map a driver error to the package's own: outage vs. bad data."""
    if isinstance(exc, _OUTAGE):
        return DependencyUnavailable("postgres", type(exc).__name__)
    sqlstate = getattr(exc, "sqlstate", "") or ""
    # Class 22: data exception; class 23: integrity constraint violation.
    if sqlstate.startswith(("22", "23")):
        return DataError(f"{type(exc).__name__} ({sqlstate})")
    # Anything else (a missing table, a permissions problem) is not the record's fault:
    # keep entries pending rather than dead-letter good data.
    return DependencyUnavailable("postgres", f"{type(exc).__name__} ({sqlstate})")


async def connect_pool(settings: Settings, *, min_size: int = 1, attempts: int = 30) -> asyncpg.Pool:
    last: BaseException | None = None
    for _ in range(attempts):
        try:
            pool = await asyncpg.create_pool(
                settings.database_url or None,
                min_size=min_size,
                max_size=max(settings.pg_pool_max, min_size),
                command_timeout=settings.pg_command_timeout_s,
                timeout=settings.pg_acquire_timeout_s,
                server_settings={
                    "application_name": "intake-gateway",
                    # A lock held on the table must not make statements wait forever.
                    "lock_timeout": str(int(settings.pg_command_timeout_s * 1000)),
                    "statement_timeout": str(int(settings.pg_command_timeout_s * 1000)),
                },
            )
            assert pool is not None
            return pool
        except _OUTAGE as exc:
            last = exc
            await asyncio.sleep(0.5)
    assert last is not None
    raise DependencyUnavailable("postgres", type(last).__name__)


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending ``gateway/sql/NNN_*.sql`` files in order, under an advisory lock so
    that several processes starting together migrate once."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        files = sorted(
            f.name for f in resources.files("gateway.sql").iterdir() if _MIGRATION_FILE.match(f.name)
        )
        for name in files:
            version = name[:3]
            if version in done:
                continue
            sql = resources.files("gateway.sql").joinpath(name).read_text(encoding="utf-8")
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied.append(name)
            log.info("migration applied", extra={"migration": name})
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return applied


@dataclass(frozen=True, slots=True)
class DeadLetter:
    stream: str
    entry_id: str
    registration_id: str | None
    reason: str
    detail: str
    payload: str | None
    deliveries: int


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    inserted: list[str]  # registration ids newly stored
    already: list[str]  # stored before (a redelivery)
    conflicts: list[int]  # indexes of rows whose identity belongs to another registration


class Store:
    def __init__(
        self, pool: asyncpg.Pool, acquire_timeout_s: float = c.DEFAULT_PG_ACQUIRE_TIMEOUT_S
    ) -> None:
        self.pool = pool
        # create_pool's own timeout bounds connecting only; a caller waiting for a free
        # connection needs its own bound.
        self.acquire_timeout_s = acquire_timeout_s

    @classmethod
    async def open(cls, settings: Settings, *, migrate_schema: bool = True) -> Store:
        pool = await connect_pool(settings)
        store = cls(pool, settings.pg_acquire_timeout_s)
        if migrate_schema:
            async with store.connection() as conn:
                await migrate(conn)
        return store

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self.pool.acquire(timeout=self.acquire_timeout_s) as conn:
                yield conn
        except (DataError, DependencyUnavailable):
            raise
        except Exception as exc:
            raise translate(exc) from exc

    async def write_rows(self, rows: Sequence[tuple[Any, ...]]) -> WriteOutcome:
        """COPY into a session staging table, INSERT … ON CONFLICT DO NOTHING, commit.

        Rows that were not inserted are either this very registration stored before
        (a redelivery: fine) or another registration owning the identity (a duplicate
        that outlived the Redis dedupe key): the caller dead-letters those.
        """
        async with self.connection() as conn:
            async with conn.transaction():
                await conn.execute(Q["create_staging"])
                await conn.copy_records_to_table(
                    "registrations_staging", records=rows, columns=COLUMNS
                )
                inserted = [r[0] for r in await conn.fetch(Q["insert_from_staging"])]
                missing = len(rows) - len(inserted)
                already: list[str] = []
                conflicts: list[int] = []
                if missing:
                    got = set(inserted)
                    todo = [(i, row) for i, row in enumerate(rows) if row[0] not in got]
                    owners = {
                        r["identity_key"]: r["registration_id"]
                        for r in await conn.fetch(
                            Q["owners_of_identities"], [row[1] for _, row in todo]
                        )
                    }
                    for i, row in todo:
                        if owners.get(row[1]) == row[0]:
                            already.append(row[0])
                        else:
                            conflicts.append(i)
        return WriteOutcome(inserted, already, conflicts)

    async def dead_letter(self, letters: Iterable[DeadLetter]) -> None:
        records = [
            (
                d.stream, d.entry_id, d.registration_id, d.reason, d.detail[:500],
                _safe_text(d.payload), d.deliveries,
            )
            for d in letters
        ]
        if not records:
            return
        async with self.connection() as conn:
            await conn.executemany(Q["insert_dead_letter"], records)

    async def registration_status(self, registration_id: str) -> tuple[str, int] | None:
        async with self.connection() as conn:
            row = await conn.fetchrow(Q["registration_status"], registration_id)
            if row is not None:
                return str(row["status"]), int(row["doses_received"])
            letter = await conn.fetchrow(Q["dead_letter_for_registration"], registration_id)
            if letter is None:
                return None
            if letter["state"] == "replayed" and letter["replayed_as"]:
                # The person's first id was never stored: answer with what its replay became.
                row = await conn.fetchrow(Q["registration_status"], letter["replayed_as"])
                if row is not None:
                    return str(row["status"]), int(row["doses_received"])
                return "queued", 0
            if letter["state"] == "dropped":
                return "rejected", 0
        return "held", 0

    async def reference(self) -> tuple[frozenset[str], frozenset[str]]:
        async with self.connection() as conn:
            sites = frozenset(r[0] for r in await conn.fetch(Q["load_sites"]))
            groups = frozenset(r[0] for r in await conn.fetch(Q["load_priority_groups"]))
        return sites, groups

    async def import_priority_groups(self, text: str) -> int:
        rows = [
            (r["code"].strip(), int(r["rank"]), r["name_vi"].strip(), r["name_en"].strip())
            for r in _csv_rows(text)
        ]
        async with self.connection() as conn:
            await conn.executemany(Q["upsert_priority_group"], rows)
        return len(rows)

    async def import_sites(self, text: str) -> int:
        rows = []
        for r in _csv_rows(text):
            active = (r.get("active") or "true").strip().lower() not in ("false", "0", "no")
            rows.append((
                r["site_id"].strip(), r["name"].strip(), r["province_code"].strip().zfill(2),
                r["ward_code"].strip().zfill(5), (r.get("address") or "").strip(),
                int(r.get("daily_capacity") or 0), active,
            ))
        async with self.connection() as conn:
            async with conn.transaction():
                await conn.executemany(Q["upsert_site"], rows)
        return len(rows)

    async def find(self, registration_ids: Sequence[str]) -> tuple[set[str], dict[str, str]]:
        """Which of these ids are stored, and which were dead-lettered (with reason)."""
        async with self.connection() as conn:
            stored = {r[0] for r in await conn.fetch(Q["find_registrations"], list(registration_ids))}
            dead = {
                r[0]: r[1] for r in await conn.fetch(Q["find_dead_letters"], list(registration_ids))
            }
        return stored, dead

    async def count_sites(self) -> int:
        async with self.connection() as conn:
            return int(await conn.fetchval(Q["count_sites"]))


def _csv_rows(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return list(csv.DictReader(io.StringIO("\n".join(lines))))


def _safe_text(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; keep the rest of a poison payload for the operator.
    return None if value is None else value.replace("\x00", "\\u0000")


def encode_screening(value: dict[str, bool] | None) -> str | None:
    return None if value is None else orjson.dumps(value).decode()
