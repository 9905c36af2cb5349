"""Dead-letter tools against real Redis and PostgreSQL: a poison record shows up in
``gateway dlq list``, and a replay goes through validation and the normal append, so a
fixed record ends as exactly one row."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from gateway import dlq
from gateway.settings import Settings
from tests.test_writer import append_people, make_writer, step_until


def cli(
    settings: Settings, cwd: Path, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        REDIS_URL=settings.redis_url,
        DATABASE_URL=settings.database_url,
        GATEWAY_KEY_PREFIX=settings.key_prefix,
    )
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        check=False,
        text=stdin is None,
        input=stdin,
        timeout=120,
    )


async def _poison_one(
    settings: Settings, pg: asyncpg.Connection, redis: Any, count: int = 6
) -> tuple[str, dict[str, Any]]:
    """Append ``count`` people and make the database refuse one of them; run the writer
    until the stream is empty. Returns the victim's registration id and payload."""
    ids = await append_people(settings, count, seed=4242)
    entries = await redis.xrange(settings.stream_key(0))
    victim = orjson.loads(entries[count // 2][1][b"p"])
    victim_id = ids[count // 2]
    await pg.execute(
        "ALTER TABLE registrations ADD CONSTRAINT poison "
        f"CHECK (identity_key <> '{victim['identity_key']}')"
    )
    await _drain(settings, pg, redis)
    return victim_id, victim


async def _drain(settings: Settings, pg: asyncpg.Connection, redis: Any) -> None:
    writer, r, store = await make_writer(settings)

    async def empty() -> bool:
        return await redis.xlen(settings.stream_key(0)) == 0

    try:
        await step_until(writer, empty)
    finally:
        await r.aclose()
        await store.close()


async def _rows_for(pg: asyncpg.Connection, identity_key: str) -> list[str]:
    return [
        r[0]
        for r in await pg.fetch(
            "SELECT registration_id FROM registrations WHERE identity_key = $1", identity_key
        )
    ]


async def test_poison_record_is_listed_and_once_fixed_replayed_into_one_row(
    settings: Settings, pg: asyncpg.Connection, redis: Any, tmp_path: Path
) -> None:
    victim_id, victim = await _poison_one(settings, pg, redis)
    assert await pg.fetchval("SELECT count(*) FROM registrations") == 5

    listed = cli(settings, tmp_path, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    letter_id = await pg.fetchval(
        "SELECT id FROM dead_letters WHERE registration_id = $1", victim_id
    )
    row = next(line for line in listed.stdout.splitlines() if line.split()[:1] == [str(letter_id)])
    assert "rejected_by_database" in row and "held" in row
    # The listing carries no personal data: no name, phone or identity number.
    for value in (victim["full_name"], victim["phone"], victim["id_document"]["number"]):
        assert value not in listed.stdout

    await pg.execute("ALTER TABLE registrations DROP CONSTRAINT poison")  # the fix
    replayed = cli(settings, tmp_path, "dlq", "replay", str(letter_id))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert f"{letter_id}: replayed as " in replayed.stdout
    await _drain(settings, pg, redis)

    stored = await _rows_for(pg, victim["identity_key"])
    assert len(stored) == 1
    state, replayed_as = await pg.fetchrow(
        "SELECT state, replayed_as FROM dead_letters WHERE id = $1", letter_id
    )
    assert (state, replayed_as) == ("replayed", stored[0])
    # Once replayed, the letter is no longer held: a second replay does nothing.
    again = cli(settings, tmp_path, "dlq", "replay", str(letter_id))
    assert again.returncode == 1 and "not_held" in again.stdout
    await _drain(settings, pg, redis)
    assert len(await _rows_for(pg, victim["identity_key"])) == 1
    assert await pg.fetchval("SELECT count(*) FROM dead_letters") == 1


async def test_replay_interrupted_before_marking_does_not_store_the_person_twice(
    settings: Settings, pg: asyncpg.Connection, redis: Any
) -> None:
    _victim_id, victim = await _poison_one(settings, pg, redis, count=3)
    await pg.execute("ALTER TABLE registrations DROP CONSTRAINT poison")
    letter_id = await pg.fetchval("SELECT id FROM dead_letters")
    first = await dlq.replay(settings, [letter_id])
    assert [r.outcome for r in first] == ["replayed"]
    # As if the operator's terminal died between the append and the update.
    await pg.execute(
        "UPDATE dead_letters SET state = 'held', replayed_as = NULL WHERE id = $1", letter_id
    )
    second = await dlq.replay(settings, [letter_id])
    assert [r.outcome for r in second] == ["already_queued"]
    assert second[0].registration_id == first[0].registration_id
    await _drain(settings, pg, redis)
    assert await _rows_for(pg, victim["identity_key"]) == [first[0].registration_id]


async def test_replay_failing_validation_stays_held_until_a_corrected_body_is_given(
    settings: Settings, pg: asyncpg.Connection, redis: Any, tmp_path: Path
) -> None:
    _victim_id, victim = await _poison_one(settings, pg, redis, count=3)
    await pg.execute("ALTER TABLE registrations DROP CONSTRAINT poison")
    letter_id = await pg.fetchval("SELECT id FROM dead_letters")
    # Meanwhile the chosen site closed: today's rules refuse the record as it is.
    await pg.execute("UPDATE sites SET active = false WHERE site_id = $1", victim["site_id"])
    refused = await dlq.replay(settings, [letter_id])
    assert refused[0].outcome == "invalid" and "site_id: unknown_site" in refused[0].detail
    assert await pg.fetchval("SELECT state FROM dead_letters WHERE id = $1", letter_id) == "held"

    shown = cli(settings, tmp_path, "dlq", "show", str(letter_id), "--body")
    assert shown.returncode == 0, shown.stderr
    body = orjson.loads(shown.stdout)
    other_site = await pg.fetchval(
        "SELECT site_id FROM sites WHERE active AND province_code = $1 LIMIT 1",
        victim["address"]["province_code"],
    ) or await pg.fetchval("SELECT site_id FROM sites WHERE active LIMIT 1")
    body["site_id"] = other_site
    fixed = cli(
        settings, tmp_path, "dlq", "replay", str(letter_id), "--body", "-", stdin=orjson.dumps(body)
    )
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    await _drain(settings, pg, redis)
    stored = await pg.fetch(
        "SELECT site_id FROM registrations WHERE identity_key = $1", victim["identity_key"]
    )
    assert [r[0] for r in stored] == [other_site]


async def test_drop_resolves_a_letter_and_list_filters_by_state(
    settings: Settings, pg: asyncpg.Connection, redis: Any, tmp_path: Path
) -> None:
    await _poison_one(settings, pg, redis, count=2)
    letter_id = await pg.fetchval("SELECT id FROM dead_letters")
    shown = cli(settings, tmp_path, "dlq", "show", str(letter_id))
    assert shown.returncode == 0 and "rejected_by_database" in shown.stdout
    dropped = cli(
        settings, tmp_path, "dlq", "drop", str(letter_id), "--note", "duplicate paper form"
    )
    assert dropped.returncode == 0, dropped.stdout + dropped.stderr
    assert "no dead letters" in cli(settings, tmp_path, "dlq", "list").stdout
    listed = cli(settings, tmp_path, "dlq", "list", "--state", "dropped", "--json")
    rows = orjson.loads(listed.stdout)
    assert [(r["id"], r["state"]) for r in rows] == [(letter_id, "dropped")]
    assert cli(settings, tmp_path, "dlq", "drop", str(letter_id)).returncode == 1


async def test_a_record_replayed_before_its_fix_keeps_its_first_arrival_time(
    settings: Settings, pg: asyncpg.Connection, redis: Any
) -> None:
    """Replaying before the cause is fixed makes a new letter; the final replay still
    queues the person at the time they first submitted, not at the replay."""
    victim_id, victim = await _poison_one(settings, pg, redis, count=3)
    first_ms = int(victim_id.split("-")[1])
    first = await pg.fetchval("SELECT id FROM dead_letters")
    await asyncio.sleep(0.05)
    assert [r.outcome for r in await dlq.replay(settings, [first])] == ["replayed"]
    await _drain(settings, pg, redis)  # dead-lettered again: the constraint is still there
    second = await pg.fetchval("SELECT id FROM dead_letters WHERE state = 'held'")
    assert second is not None and second != first
    await pg.execute("ALTER TABLE registrations DROP CONSTRAINT poison")
    assert [r.outcome for r in await dlq.replay(settings, [second])] == ["replayed"]
    await _drain(settings, pg, redis)
    received = await pg.fetchval(
        "SELECT received_at FROM registrations WHERE identity_key = $1", victim["identity_key"]
    )
    assert int(received.timestamp() * 1000) == first_ms
