"""Section 3: the writer's drain rate against a raw bulk COPY of the same rows into the
same table on the same server.

Input: the entries the gateway appended in the ceiling section (real
registrations, real stream entries), topped up when there are too few (``--quick``, or
``--only drain``) by the gateway's own validation and appender called in-process on
more template bodies. For each writer configuration they are copied
into a fresh stream (pipelined XADD) and drained by ``gateway writer`` into a fresh
database; the rate is taken between 10 % and 90 % drained, so process start-up is not
counted. Then the rows the writer would produce (``gateway.writer.coerce``, computed
before the clock starts) are written by one asyncpg connection, no Redis:

* ``staged_bulk``: one COPY into the session staging table + one INSERT … ON CONFLICT DO
  NOTHING, one transaction: the writer's SQL with no batch limit;
* ``staged_batches``: the same per writer batch (same size, one commit each): exactly the
  writer's SQL path, minus Redis and Python per-entry work;
* ``direct_copy``: one COPY straight into ``registrations`` (no conflict handling): the
  floor of what PostgreSQL can take.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, date, datetime
from functools import partial
from typing import Any, cast

import asyncpg
import orjson

from benchmarks import bodies, ceiling, cpu_profile
from benchmarks.harness import CpuWatch, say
from benchmarks.session import Sampler, Session, ratio
from benchmarks.stack import run_async
from gateway.append import Appender
from gateway.connections import connect
from gateway.identity import Hasher
from gateway.settings import Settings
from gateway.store import COLUMNS, Q
from gateway.stream import Entry
from gateway.validation import validate
from gateway.writer import coerce

Row = tuple[Any, ...]


def read_entries(session: Session, prefix: str, limit: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
    client = session.stack.client()
    key = Settings(key_prefix=prefix).stream_key(0)
    entries: list[tuple[bytes, dict[bytes, bytes]]] = []
    start = "-"
    while len(entries) < limit:
        chunk = cast(list[tuple[bytes, dict[bytes, bytes]]],
                     client.xrange(key, min=start, max="+",
                                   count=min(10_000, limit - len(entries))))
        if not chunk:
            break
        entries.extend(chunk)
        last = chunk[-1][0].decode()
        ms, seq = last.split("-")
        start = f"{ms}-{int(seq) + 1}"
    return entries


class _Dev:
    """Every site and group is known: template bodies come from the seeded lists."""

    def has_site(self, site_id: str) -> bool:
        return True

    def has_priority_group(self, code: str) -> bool:
        return True


async def _fill(settings: Settings, lines: list[str], first: int, count: int) -> None:
    redis = await connect(settings)
    appender = Appender(redis, settings, Hasher.from_secret(settings.identity_secret))
    today = date.today()
    try:
        for start in range(first, first + count, 256):
            at = datetime.now(UTC).isoformat(timespec="milliseconds")
            registrations = [
                validate(orjson.loads(bodies.body(lines, k)), channel="web", reference=_Dev(),
                         today=today, min_age_years=settings.min_age_years)
                for k in range(start, min(start + 256, first + count))
            ]
            await asyncio.gather(*(appender.append(r, idempotency_key=None, received_at=at)
                                   for r in registrations))
    finally:
        await redis.aclose()


def top_up(session: Session, prefix: str, wanted: int) -> int:
    """Append registrations until the stream holds ``wanted`` entries; returns how many."""
    have = session.stack.stream_length(prefix)
    if have >= wanted:
        return 0
    lines = session.templates.path.read_text(encoding="utf-8").splitlines()
    settings = Settings(redis_url=session.stack.redis.url, key_prefix=prefix)
    run_async(lambda: _fill(settings, lines, session.reserve_people(), wanted - have))
    return wanted - have


def to_rows(entries: list[tuple[bytes, dict[bytes, bytes]]], stream: str) -> list[Row]:
    return [coerce(Entry(stream, 0, eid.decode(), fields)).row for eid, fields in entries]


def refill(session: Session, prefix: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
    """The same entries (same ids, so the same registration ids) in a fresh stream."""
    client = session.stack.client()
    key = Settings(key_prefix=prefix).stream_key(0)
    pipe = client.pipeline(transaction=False)
    for n, (eid, fields) in enumerate(entries, 1):
        pipe.xadd(key, dict(fields), id=eid)  # type: ignore[arg-type]
        if n % 5000 == 0:
            pipe.execute()  # type: ignore[no-untyped-call]
    pipe.execute()  # type: ignore[no-untyped-call]


def drain_once(session: Session, entries: list[tuple[bytes, dict[bytes, bytes]]],
               processes: int, batch: int, tag: str, profile: bool = False) -> dict[str, Any]:
    stack = session.stack
    prefix = f"bench:drain{tag}:"
    refill(session, prefix, entries)
    total = len(entries)
    say(f"drain    writer {processes}p batch {batch}: {total} entries")
    db = stack.fresh_database(f"bench_drain{tag}")
    started = time.monotonic()
    with Sampler(lambda: (time.monotonic(), stack.stream_length(prefix)), 0.05) as sampler:
        writer = session.start_writer(prefix, db, processes=processes, batch=batch)
        watch = {"writer": writer.pids, "postgres": stack.postgres_pids(),
                 "redis": [stack.redis.pid or 0]}
        cpu = CpuWatch(watch)
        cpu.start()
        spy = None
        if profile:  # from the first commit on: start-up (imports) is not the subject
            deadline = time.monotonic() + 60
            while stack.stream_length(prefix) >= total and time.monotonic() < deadline:
                time.sleep(0.02)
            spy = cpu_profile.Recorder(writer.pids[0], session.config.out_dir / "profile-writer.txt",
                                       idle=True)
        finished = session.wait_drained(prefix, timeout_s=max(120.0, total / 500))
        used = cpu.stop()
        profiled = spy.stop() if spy is not None else None
        session.stop(writer)
    stored = stack.count_rows(db)
    points = [v for _, v in sampler.samples]
    rate = _rate_between(points, total, 0.1, 0.9)
    stack.forget_prefix(prefix)
    result: dict[str, Any] = {
        "processes": processes, "batch": batch, "entries": total, "stored": stored,
        "rows_per_s": rate, "wall_s_including_start": round(time.monotonic() - started, 2),
        "drained": finished is not None, "cpu": used,
    }
    if profiled is not None:
        result["profile"] = cpu_profile.writer_shares(profiled.read_text())
        result["profile"]["collapsed_stacks"] = profiled.name
    return result


def _rate_between(samples: list[tuple[float, int]], total: int, low: float,
                  high: float) -> float | None:
    """Rows/s between ``low`` and ``high`` fractions drained (linear in the samples)."""
    def when(fraction: float) -> float | None:
        left = total * (1 - fraction)
        return next((t for t, n in samples if n <= left), None)

    t_low, t_high = when(low), when(high)
    if t_low is None or t_high is None or t_high <= t_low:
        return None
    return round(total * (high - low) / (t_high - t_low), 1)


async def _raw(url: str, rows: list[Row], mode: str, batch: int) -> float:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE registrations")
        started = time.perf_counter()
        if mode == "direct_copy":
            async with conn.transaction():
                await conn.copy_records_to_table("registrations", records=rows, columns=COLUMNS)
        else:
            size = len(rows) if mode == "staged_bulk" else batch
            for i in range(0, len(rows), size):
                async with conn.transaction():
                    await conn.execute(Q["create_staging"])
                    await conn.copy_records_to_table("registrations_staging",
                                                     records=rows[i:i + size], columns=COLUMNS)
                    await conn.fetch(Q["insert_from_staging"])
        elapsed = time.perf_counter() - started
        count = int(await conn.fetchval("SELECT count(*) FROM registrations"))
        if count != len(rows):
            raise RuntimeError(f"raw {mode} stored {count} of {len(rows)} rows")
        return round(len(rows) / elapsed, 1)
    finally:
        await conn.close()


def run(session: Session) -> dict[str, Any]:
    stack, cfg = session.stack, session.config
    say(f"drain    {cfg.drain_entries} entries: stream from the ceiling section, topped up")
    topped_up = top_up(session, ceiling.PREFIX_MAIN, cfg.drain_entries)
    entries = read_entries(session, ceiling.PREFIX_MAIN, cfg.drain_entries * 3)
    rows = to_rows(entries, Settings(key_prefix=ceiling.PREFIX_MAIN).stream_key(0))
    writers = [drain_once(session, entries, processes, batch, f"{i}", profile=i == 0)
               for i, (processes, batch) in enumerate(cfg.writer_configs)]
    raw_db = stack.fresh_database("bench_raw")
    default_batch = Settings().writer_batch
    say("drain    raw COPY of the same rows")
    raw: dict[str, float] = {}
    for mode in ("staged_bulk", "staged_batches", "direct_copy"):
        raw[mode] = run_async(partial(_raw, raw_db, rows, mode, default_batch))
    stack.forget_prefix(ceiling.PREFIX_MAIN)
    first = writers[0]
    return {
        "rows": len(rows), "topped_up_in_process": topped_up,
        "writer_batch_default": default_batch, "writers": writers,
        "raw_rows_per_s": raw,
        "summary": {
            "writer_rows_per_s": first["rows_per_s"],
            "raw_staged_bulk_rows_per_s": raw["staged_bulk"],
            "writer_vs_raw_staged_bulk": ratio(first["rows_per_s"], raw["staged_bulk"]),
            "writer_vs_raw_staged_batches": ratio(first["rows_per_s"], raw["staged_batches"]),
            "writer_vs_direct_copy": ratio(first["rows_per_s"], raw["direct_copy"]),
            "best_writer_config": max(writers, key=lambda w: w["rows_per_s"] or 0),
        },
    }

