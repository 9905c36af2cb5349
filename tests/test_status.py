"""``gateway status`` against real Redis and PostgreSQL: the numbers, the rates, the
watch mode, and the exit code that makes it a probe."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from gateway import devstack
from gateway.connections import connect
from gateway.dlq import DeadLetters
from gateway.settings import Settings
from gateway.status import Collector
from gateway.stream import Streams
from tests.conftest import wait_for
from tests.test_writer import append_people, make_writer


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    return dict(
        os.environ,
        REDIS_URL=settings.redis_url,
        DATABASE_URL=settings.database_url,
        GATEWAY_KEY_PREFIX=settings.key_prefix,
        **extra,
    )


async def status(settings: Settings, cwd: Path, *args: str, **extra: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "status",
        *args,
        cwd=cwd,
        env=env_for(settings, **extra),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def _writer_heartbeat(settings: Settings) -> None:
    redis = await connect(settings)
    try:
        streams = Streams(redis, settings, "probe-writer")
        await streams.ensure_groups()
        await streams.heartbeat(0)
    finally:
        await redis.aclose()


async def test_status_is_healthy_with_a_writer_alive_and_nothing_queued(
    settings: Settings, tmp_path: Path
) -> None:
    await _writer_heartbeat(settings)
    code, out = await status(settings, tmp_path, "--json", "--sample", "0")
    report = orjson.loads(out)
    assert code == 0, out
    assert report["healthy"] is True and report["problems"] == []
    assert (report["backlog"], report["writers_alive"], report["time_to_drain_s"]) == (0, 1, 0.0)
    assert report["dead_letters"]["by_state"] == {}


async def test_status_is_unhealthy_when_no_writer_drains_and_the_oldest_entry_ages(
    settings: Settings, tmp_path: Path
) -> None:
    await append_people(settings, 20)
    await asyncio.sleep(0.7)
    code, out = await status(
        settings, tmp_path, "--json", "--sample", "0", GATEWAY_ALERT_OLDEST_AGE_S="0.5"
    )
    report = orjson.loads(out)
    assert code == 1
    assert report["backlog"] == 20 and report["lag"] == 20 and report["pending"] == 0
    assert report["oldest_age_s"] >= 0.7
    assert any("no writer alive" in p for p in report["problems"])
    assert any("oldest registration" in p for p in report["problems"])
    code, table = await status(
        settings, tmp_path, "--sample", "0", GATEWAY_ALERT_OLDEST_AGE_S="0.5"
    )
    assert code == 1
    assert "UNHEALTHY" in table and "writers alive 0" in table
    assert any(line.split()[:2] == ["0", "20"] for line in table.splitlines())


async def test_status_measures_drain_rate_and_time_to_drain(settings: Settings) -> None:
    settings = settings.with_changes(writer_batch=50)
    await append_people(settings, 400)
    writer, redis, store = await make_writer(settings)
    collector = Collector(settings)
    letters = DeadLetters(store)
    try:
        before = await collector.report(redis, letters)
        assert before.rates is None and before.snapshot is not None
        for _ in range(4):
            await writer.process(await writer.streams.read_new(50, 100))
        await asyncio.sleep(0.3)
        await writer._beat(force=True)  # publishes the 200 rows to writers:drained
        after = await collector.report(redis, letters)
    finally:
        await redis.aclose()
        await store.close()
    assert after.rates is not None and after.snapshot is not None
    assert after.snapshot.backlog == 200 and after.snapshot.drained_total == 200
    assert after.rates.intake_per_s == 0
    assert after.rates.drain_per_s == 200 / after.rates.window_s
    eta = after.as_dict()["time_to_drain_s"]
    assert eta == round(200 / after.rates.drain_per_s, 1)
    assert after.healthy


async def test_status_watch_shows_the_backlog_rise_and_drain(
    settings: Settings, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    await _writer_heartbeat(settings)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "status",
        "--watch",
        "--interval",
        "0.3",
        cwd=tmp_path,
        env=env_for(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    seen: list[int] = []

    async def backlog_shown(expected: int) -> bool:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
        words = line.decode().split()
        if words[:1] == ["0"] and len(words) >= 2:  # the shard row: shard, backlog, ...
            seen.append(int(words[1].replace(",", "")))
            return seen[-1] == expected
        return False

    try:
        await wait_for(lambda: backlog_shown(0), timeout=30, interval=0)
        await append_people(settings, 25)
        await wait_for(lambda: backlog_shown(25), timeout=30, interval=0)
        writer, redis, store = await make_writer(settings)
        try:
            await writer.process(await writer.streams.read_new(100, 100))
        finally:
            await redis.aclose()
            await store.close()
        await wait_for(lambda: backlog_shown(0), timeout=30, interval=0)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), timeout=15)
    assert seen[0] == 0 and 25 in seen and seen[-1] == 0
    assert await pg.fetchval("SELECT count(*) FROM registrations") == 25


async def test_status_exits_unhealthy_when_redis_is_unreachable(
    settings: Settings, tmp_path: Path
) -> None:
    closed = f"redis://127.0.0.1:{devstack.free_port()}/0"
    started = time.monotonic()
    code, out = await status(settings.with_changes(redis_url=closed), tmp_path, "--json")
    report = orjson.loads(out)
    assert code == 1
    assert report["redis_up"] is False and report["postgres_up"] is True
    assert any("redis unreachable" in p for p in report["problems"])
    assert time.monotonic() - started < 30


async def test_status_reads_the_rates_a_gateway_recorded(
    settings: Settings, tmp_path: Path, client: Any
) -> None:
    """With a gateway running, one-shot status needs no sampling pause: the gateway's
    once-a-second history already holds the rates."""
    await _writer_heartbeat(settings)

    async def two_points() -> bool:
        redis = await connect(settings)
        try:
            return int(await redis.xlen(settings.key("ops:history"))) >= 2
        finally:
            await redis.aclose()

    await wait_for(two_points, timeout=10, interval=0.2)
    started = time.monotonic()
    code, out = await status(settings, tmp_path, "--json", "--sample", "30")
    assert code == 0, out
    report = orjson.loads(out)
    assert report["intake_per_s"] == 0 and report["drain_per_s"] == 0
    assert time.monotonic() - started < 20  # it did not sit out the 30 s sample
