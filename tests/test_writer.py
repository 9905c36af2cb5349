"""The writer against real Redis and PostgreSQL: no loss, no duplicates, poison isolated."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from gateway.append import Appender
from gateway.connections import connect
from gateway.identity import Hasher
from gateway.settings import Settings
from gateway.store import Store
from gateway.stream import Streams
from gateway.validation import validate
from gateway.writer import Writer, coerce, consumer_name
from tests.conftest import wait_for
from tests.helpers import valid_body


class Reference:
    def __init__(self, sites: set[str], groups: set[str]) -> None:
        self.sites, self.groups = sites, groups

    def has_site(self, site_id: str) -> bool:
        return site_id in self.sites

    def has_priority_group(self, code: str) -> bool:
        return code in self.groups


async def reference(settings: Settings) -> Reference:
    store = await Store.open(settings, migrate_schema=False)
    try:
        sites, groups = await store.reference()
    finally:
        await store.close()
    return Reference(set(sites), set(groups))


async def append_people(settings: Settings, count: int, seed: int = 100) -> list[str]:
    """Append ``count`` distinct valid registrations the way the gateway does."""
    ref = await reference(settings)
    redis = await connect(settings)
    appender = Appender(redis, settings, Hasher.from_secret(settings.identity_secret))
    ids = []
    try:
        from gateway.datagen import Generator

        gen = Generator(seed)
        regs = [
            validate(gen.person(), channel="web", reference=ref, today=date.today(), min_age_years=18)
            for _ in range(count)
        ]
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        results = await asyncio.gather(
            *(appender.append(r, idempotency_key=None, received_at=now) for r in regs)
        )
        ids = [r.registration_id for r in results]
        assert all(r.outcome == 0 for r in results)
    finally:
        await redis.aclose()
    return ids


async def make_writer(settings: Settings) -> tuple[Writer, Any, Store]:
    redis = await connect(settings)
    store = await Store.open(settings, migrate_schema=False)
    writer = Writer(settings, Streams(redis, settings, consumer_name()), store)
    await writer.streams.ensure_groups()
    return writer, redis, store


async def drain(writer: Writer, pg: asyncpg.Connection, expected: int, timeout: float = 20) -> None:
    async def done() -> bool:
        await writer.step()
        return await pg.fetchval("SELECT count(*) FROM registrations") >= expected

    await wait_for(done, timeout=timeout, interval=0)


async def test_writer_stores_each_appended_registration_once_and_empties_the_stream(
    settings: Settings, pg: asyncpg.Connection, redis: Any
) -> None:
    ids = await append_people(settings, 120)
    writer, r, store = await make_writer(settings)
    try:
        await drain(writer, pg, 120)
        stored = {row[0] for row in await pg.fetch("SELECT registration_id FROM registrations")}
        assert stored == set(ids)
        assert await redis.xlen(settings.stream_key(0)) == 0
        pending = await redis.xpending(settings.stream_key(0), "writers")
        assert pending["pending"] == 0
    finally:
        await r.aclose()
        await store.close()


async def test_entries_of_a_writer_that_died_before_acking_are_reclaimed_once(
    settings: Settings, pg: asyncpg.Connection, redis: Any
) -> None:
    ids = await append_people(settings, 40)
    dead, r1, s1 = await make_writer(settings)
    # The first writer reads the batch and dies before writing or acknowledging it.
    taken = await dead.streams.read_new(count=1000, block_ms=100)
    assert len(taken) == 40
    await r1.aclose()
    await s1.close()
    heir, r2, s2 = await make_writer(settings)
    try:
        await asyncio.sleep(settings.claim_idle_ms / 1000 + 0.1)
        await drain(heir, pg, 40)
        rows = await pg.fetch("SELECT registration_id, count(*) OVER () FROM registrations")
        assert sorted(r[0] for r in rows) == sorted(ids)
        assert await redis.xlen(settings.stream_key(0)) == 0
        assert heir.stats.committed == 40
    finally:
        await r2.aclose()
        await s2.close()


async def test_redelivery_after_commit_does_not_duplicate(settings: Settings, pg: asyncpg.Connection, redis: Any) -> None:
    """A writer that committed but died before XACK: the entry comes back, and is
    recognised as already stored rather than dead-lettered or inserted twice."""
    await append_people(settings, 5)
    writer, r, store = await make_writer(settings)
    try:
        entries = await writer.streams.read_new(count=100, block_ms=100)
        good = [coerce(e) for e in entries]
        await store.write_rows([g.row for g in good])  # committed, never acked
        await asyncio.sleep(settings.claim_idle_ms / 1000 + 0.1)
        await step_until(writer, lambda: _stream_empty(redis, settings))
    finally:
        await r.aclose()
        await store.close()
    assert await pg.fetchval("SELECT count(*) FROM registrations") == 5
    assert await pg.fetchval("SELECT count(*) FROM dead_letters") == 0


async def _stream_empty(redis: Any, settings: Settings) -> bool:
    return await redis.xlen(settings.stream_key(0)) == 0


async def step_until(writer: Writer, predicate: Any, timeout: float = 15) -> None:
    async def stepped() -> Any:
        await writer.step()
        return await predicate()

    await wait_for(stepped, timeout=timeout, interval=0)


async def test_one_poison_record_is_dead_lettered_alone(settings: Settings, pg: asyncpg.Connection, redis: Any) -> None:
    ids = await append_people(settings, 30)
    entries = await redis.xrange(settings.stream_key(0))
    victim = orjson.loads(entries[13][1][b"p"])
    # A rule the database enforces and the gateway does not know: exactly one row of
    # the batch now breaks it, a data error only PostgreSQL can see.
    await pg.execute(
        f"ALTER TABLE registrations ADD CONSTRAINT poison CHECK (identity_key <> '{victim['identity_key']}')"
    )
    # And one entry that is not even a registration.
    await redis.xadd(settings.stream_key(0), {b"p": b"\xff not json", b"t": b"zzzzzzzzzz", b"a": b"x"})
    writer, r, store = await make_writer(settings)
    try:
        await drain(writer, pg, 29)
        await step_until(writer, lambda: _stream_empty(redis, settings))
    finally:
        await r.aclose()
        await store.close()
    assert await pg.fetchval("SELECT count(*) FROM registrations") == 29
    reasons = sorted(r[0] for r in await pg.fetch("SELECT reason FROM dead_letters"))
    assert reasons == ["malformed", "rejected_by_database"]
    stored = {row[0] for row in await pg.fetch("SELECT registration_id FROM registrations")}
    assert len(stored & set(ids)) == 29
    # The dead-lettered person is free to register again: their dedupe key is gone.
    dedupe = [k async for k in redis.scan_iter(match=settings.key_prefix + "dedupe:*")]
    assert len(dedupe) == 29


async def test_identity_already_stored_under_another_id_is_dead_lettered(
    settings: Settings, pg: asyncpg.Connection, redis: Any
) -> None:
    """After the Redis dedupe key expired, the same person is appended again: the
    database's unique constraint catches it and the record is dead-lettered, not lost."""
    await append_people(settings, 3, seed=5)
    keys = [k async for k in redis.scan_iter(match=settings.key_prefix + "dedupe:*")]
    writer, r, store = await make_writer(settings)
    try:
        await drain(writer, pg, 3)
        await redis.delete(*keys)
        await append_people(settings, 1, seed=5)  # the first person of the same seed again
        await step_until(writer, lambda: _dead_letters(pg))
    finally:
        await r.aclose()
        await store.close()
    assert await pg.fetchval("SELECT count(*) FROM registrations") == 3
    assert await pg.fetchval("SELECT reason FROM dead_letters") == "duplicate_identity"


async def _dead_letters(pg: asyncpg.Connection) -> int:
    return int(await pg.fetchval("SELECT count(*) FROM dead_letters"))


@pytest.mark.parametrize("shards", [3])
async def test_sharded_streams_are_all_drained(settings: Settings, pg: asyncpg.Connection, shards: int) -> None:
    sharded = settings.with_changes(shards=shards)
    ids = await append_people(sharded, 60)
    assert len({rid.split("-")[0] for rid in ids}) == shards
    writer, r, store = await make_writer(sharded)
    try:
        await drain(writer, pg, 60)
    finally:
        await r.aclose()
        await store.close()
    assert await pg.fetchval("SELECT count(*) FROM registrations") == 60


async def test_status_of_a_dead_lettered_id_follows_its_replay(settings: Settings, pg: asyncpg.Connection) -> None:
    ids = await append_people(settings, 2, seed=21)
    writer, r, store = await make_writer(settings)
    try:
        await drain(writer, pg, 2)
        stored_id, lost_id = ids[0], "0-1-0-aaaaaaaaaa"
        await pg.execute(
            "INSERT INTO dead_letters (stream, entry_id, registration_id, reason) VALUES ('s', '1-0', $1, 'malformed')",
            lost_id,
        )
        assert await store.registration_status(lost_id) == ("held", 0)
        await pg.execute(
            "UPDATE dead_letters SET state = 'replayed', replayed_as = $1 WHERE registration_id = $2",
            stored_id, lost_id,
        )
        assert await store.registration_status(lost_id) == ("stored", 0)
        await pg.execute("UPDATE dead_letters SET state = 'dropped', replayed_as = NULL")
        assert await store.registration_status(lost_id) == ("rejected", 0)
        assert await store.registration_status("0-2-0-bbbbbbbbbb") is None
    finally:
        await r.aclose()
        await store.close()
