"""Faults against real servers: private Redis / PostgreSQL processes on free loopback
ports (``gateway.devstack``) that the tests stop, kill, freeze, fill or lock; the gateway
in-process or as a real ``gateway serve`` process; the writer as in production.

The same faults under sustained load, reconciled request by request, are the
``gateway chaos`` scenarios (tests/test_chaos_short.py runs the short form).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from gateway import constants as c
from gateway import devstack
from gateway.app import RUNTIME
from gateway.backlog import BacklogMonitor
from gateway.connections import check_safety, connect
from gateway.datagen import Generator
from gateway.exceptions import ConfigurationError, DependencyUnavailable
from gateway.settings import Settings
from gateway.store import Store, connect_pool
from gateway.writer import coerce, run_writer
from tests.conftest import make_client, wait_for
from tests.test_writer import append_people, make_writer


# --- private servers ---------------------------------------------------------------
class PrivateRedis:
    """A Redis of our own that a test may stop, kill, freeze and start again."""

    def __init__(self, data_dir: Path, **options: Any) -> None:
        self.data_dir, self.options = data_dir, options
        self.service = devstack.start_redis(data_dir, **options)
        self.url = self.service.url

    def restart(self) -> None:
        self.service = devstack.start_redis(self.data_dir, self.service.port, **self.options)

    def signal(self, sig: int) -> None:
        assert self.service.pid is not None
        os.kill(self.service.pid, sig)

    def client(self) -> aioredis.Redis:
        conn: aioredis.Redis = aioredis.Redis.from_url(self.url)
        return conn

    def close(self) -> None:
        if self.service.process is not None and self.service.process.poll() is None:
            self.signal(signal.SIGCONT)
        self.service.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., PrivateRedis]]:
    started: list[PrivateRedis] = []

    def start(**options: Any) -> PrivateRedis:
        server = PrivateRedis(tmp_path / f"redis{len(started)}", **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture(scope="module")
def private_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[devstack.Service]]:
    """A PostgreSQL of our own (a one-item list: a restart replaces the service)."""
    holder = [devstack.start_postgres(tmp_path_factory.mktemp("pg") / "cluster")]
    yield holder
    holder[0].stop()


async def post(client: Any, body: Any, **headers: str) -> Any:
    return await client.post("/v1/registrations", data=orjson.dumps(body),
                             headers={"Content-Type": "application/json", "X-Channel": "web",
                                      **headers})


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


# --- Redis -------------------------------------------------------------------------
async def test_redis_down_is_answered_503_with_retry_after_at_once_and_recovers_by_itself(
    settings: Settings, private_redis: Callable[..., PrivateRedis]
) -> None:
    server = private_redis()
    client = await make_client(settings.with_changes(redis_url=server.url))
    gen = Generator(61)
    try:
        before = [gen.person() for _ in range(5)]
        ids = []
        for body in before:
            resp = await post(client, body)
            assert resp.status == 202
            ids.append((await resp.json())["registration_id"])
        await asyncio.to_thread(server.service.stop)  # SIGTERM; AOF on
        for _ in range(5):
            started = time.monotonic()
            resp = await post(client, gen.person())
            assert resp.status == 503
            assert int(resp.headers["Retry-After"]) >= 1
            assert time.monotonic() - started < 1.0
        assert (await client.get("/readyz")).status == 503
        await asyncio.to_thread(server.restart)
        statuses = []
        for _ in range(20):  # a pooled connection to the old server may cost one 503
            statuses.append((await post(client, gen.person())).status)
            if statuses[-1] == 202:
                break
            await asyncio.sleep(0.1)
        assert statuses[-1] == 202 and set(statuses) <= {202, 503}
        # What was acknowledged before the restart survived it: replays, same ids.
        for body, rid in zip(before, ids, strict=True):
            resp = await post(client, body)
            assert (resp.status, (await resp.json())["registration_id"]) == (200, rid)
    finally:
        await client.close()


async def test_hung_redis_is_answered_503_within_the_append_timeout(
    settings: Settings, private_redis: Callable[..., PrivateRedis]
) -> None:
    """Requests queued behind a call to a Redis that stopped answering do not wait for
    a second timeout of their own."""
    server = private_redis()
    timeout = 1.0
    client = await make_client(settings.with_changes(redis_url=server.url, append_timeout_s=timeout))
    gen = Generator(62)
    try:
        assert (await post(client, gen.person())).status == 202

        async def one(delay: float) -> tuple[int, str | None, float]:
            await asyncio.sleep(delay)
            started = time.monotonic()
            resp = await post(client, gen.person())
            return resp.status, resp.headers.get("Retry-After"), time.monotonic() - started

        server.signal(signal.SIGSTOP)
        try:
            answers = await asyncio.gather(*(one(d) for d in (0, 0, 0, 0.4, 0.4, 0.6)))
        finally:
            server.signal(signal.SIGCONT)
        assert [(status, bool(ra)) for status, ra, _ in answers] == [(503, True)] * 6
        assert max(took for _, _, took in answers) < timeout + 0.35
        await wait_for(lambda: _accepts(client, gen), timeout=10, interval=0.1)
    finally:
        await client.close()


async def _accepts(client: Any, gen: Generator) -> bool:
    return bool((await post(client, gen.person())).status == 202)


async def test_redis_out_of_memory_is_answered_503_never_500(
    settings: Settings, private_redis: Callable[..., PrivateRedis]
) -> None:
    server = private_redis()  # noeviction
    client = await make_client(settings.with_changes(redis_url=server.url))
    r = server.client()
    gen = Generator(63)
    try:
        first = gen.person()
        resp = await post(client, first)
        assert resp.status == 202
        rid = (await resp.json())["registration_id"]
        used = int((await r.info("memory"))["used_memory"])
        await r.config_set("maxmemory", str(used // 2))
        for _ in range(5):
            resp = await post(client, gen.person())
            assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
            assert (await resp.json())["error"] == "temporarily_unavailable"
        # A replay needs no memory: the person who is already registered gets the id.
        resp = await post(client, first)
        assert (resp.status, (await resp.json())["registration_id"]) == (200, rid)
        await r.config_set("maxmemory", "0")
        assert (await post(client, gen.person())).status == 202
    finally:
        await r.aclose()
        await client.close()


def _serve(settings: Settings, redis_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("GATEWAY_") and k not in ("REDIS_URL", "DATABASE_URL")}
    base.update(REDIS_URL=redis_url, DATABASE_URL=settings.database_url,
                GATEWAY_PORT=str(devstack.free_port()), GATEWAY_KEY_PREFIX=settings.key_prefix,
                GATEWAY_LOG_LEVEL="WARNING", **env)
    return subprocess.run([sys.executable, "-m", "gateway", "serve"], env=base, text=True,
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL, check=False)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"appendonly": False}, "appendonly is off"),
        ({"maxmemory_policy": "allkeys-lru"}, "maxmemory-policy is allkeys-lru"),
    ],
    ids=["no-persistence", "evicting"],
)
def test_production_gateway_refuses_an_unsafe_redis_and_says_why(
    settings: Settings, private_redis: Callable[..., PrivateRedis], options: dict[str, Any],
    reason: str,
) -> None:
    server = private_redis(**options)
    done = _serve(settings, server.url, GATEWAY_MODE="production",
                  GATEWAY_IDENTITY_SECRET="a-production-secret-for-this-test")
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("gateway: refusing to start in production mode")
    assert reason in last
    assert "Traceback" not in done.stderr


async def test_production_mode_accepts_a_persistent_noeviction_redis(
    private_redis: Callable[..., PrivateRedis]
) -> None:
    server = private_redis()
    prod = Settings(redis_url=server.url, mode="production", identity_secret="s" * 32)
    conn = await connect(prod)
    try:
        safety = await check_safety(conn, prod)
    finally:
        await conn.aclose()
    assert safety.problems(prod) == []


async def test_strict_durability_refuses_a_redis_that_cannot_confirm_disk_writes(
    private_redis: Callable[..., PrivateRedis]
) -> None:
    no_aof = private_redis(appendonly=False)
    everysec = private_redis()
    strict = Settings(durability="strict")  # development mode: still refused
    for server in (no_aof, everysec):
        conn = await connect(strict.with_changes(redis_url=server.url))
        try:
            version = tuple(int(p) for p in (await conn.info("server"))["redis_version"].split("."))
            cannot = server is no_aof or version < (7, 2)
            if cannot:
                with pytest.raises(ConfigurationError, match="GATEWAY_DURABILITY=strict"):
                    await check_safety(conn, strict)
            else:
                assert (await check_safety(conn, strict)).confirms_disk_writes
        finally:
            await conn.aclose()


@pytest.mark.parametrize("path", ["appendfsync-always", "waitaof"])
async def test_strict_durability_confirms_disk_writes_and_survives_a_redis_crash(
    settings: Settings, private_redis: Callable[..., PrivateRedis], path: str
) -> None:
    """Redis < 7.2: appendfsync always (the reply follows the fsync). Redis >= 7.2 (the
    Valkey wheel): WAITAOF after each batch. Then SIGKILL: every 202 is still there."""
    if path == "waitaof":
        server = private_redis(prefer="wheels")
    else:
        server = private_redis(appendfsync="always")
    strict = settings.with_changes(redis_url=server.url, durability="strict")
    client = await make_client(strict)
    r = server.client()
    gen = Generator(64)
    try:
        bodies = [gen.person() for _ in range(4)]
        answers = await asyncio.gather(*(post(client, b) for b in bodies))
        assert [a.status for a in answers] == [202] * 4
        ids = [(await a.json())["registration_id"] for a in answers]
        stats = await r.info("commandstats")
        waitaof = int(stats.get("cmdstat_waitaof", {}).get("calls", 0))
        if path == "waitaof":
            assert waitaof >= 1
        else:
            config = {_text(k): _text(v) for k, v in (await r.config_get("appendfsync")).items()}
            assert config == {"appendfsync": "always"}
        await r.aclose()
        await asyncio.to_thread(server.service.kill)
        await asyncio.to_thread(server.restart)
        r = server.client()
        assert await r.xlen(strict.stream_key(0)) == 4
        for body, rid in zip(bodies, ids, strict=True):
            for _ in range(20):  # the first call on a pooled connection may fail
                resp = await post(client, body)
                if resp.status != 503:
                    break
                await asyncio.sleep(0.1)
            assert (resp.status, (await resp.json())["registration_id"]) == (200, rid)
    finally:
        await r.aclose()
        await client.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- the stream and its consumer group -----------------------------------------------
@pytest.mark.parametrize("fault", ["group-destroyed", "stream-deleted"])
async def test_writer_recreates_a_missing_group_once_raises_the_alarm_and_does_not_spin(
    settings: Settings, pg: asyncpg.Connection, redis: Any, fault: str
) -> None:
    key = settings.stream_key(0)
    writer, r, store = await make_writer(settings)
    try:
        if fault == "group-destroyed":  # entries queued, then the group vanishes
            ids = await append_people(settings, 6, seed=71)
            await redis.xgroup_destroy(key, c.CONSUMER_GROUP)
        else:  # an operator's DEL on the (empty) stream, then new registrations
            await redis.delete(key)
            ids = await append_people(settings, 6, seed=72)
        alarms = counter("writer_group_recreated_total")
        steps = 0

        async def stored() -> bool:
            nonlocal steps
            steps += 1
            await writer.step()
            return int(await pg.fetchval("SELECT count(*) FROM registrations")) == len(ids)

        await wait_for(stored, timeout=10, interval=0)
        assert counter("writer_group_recreated_total") - alarms == 1
        assert steps <= 5
        # Idle afterwards: each step blocks for writer_block_ms instead of spinning.
        idle_started, idle_steps = time.monotonic(), 0
        while time.monotonic() - idle_started < 1.0:
            await writer.step()
            idle_steps += 1
        assert idle_steps <= 1.0 / (settings.writer_block_ms / 1000) + 3
        assert counter("writer_group_recreated_total") - alarms == 1
    finally:
        await r.aclose()
        await store.close()


async def test_writer_skips_entries_deleted_while_pending_records_them_and_reaches_the_end(
    settings: Settings, pg: asyncpg.Connection, redis: Any
) -> None:
    s = settings.with_changes(writer_batch=50, claim_idle_ms=100, claim_interval_s=0)
    key = s.stream_key(0)
    writer, r, store = await make_writer(s)
    try:
        ids = await append_people(s, 4, seed=73)
        async with redis.pipeline(transaction=True) as pipe:  # a writer that then died
            for _ in range(130):
                pipe.xadd(key, {"x": "doomed"})
            pipe.xreadgroup(c.CONSUMER_GROUP, "dead-writer", {key: ">"}, count=1000)
            replies = await pipe.execute()
        await redis.xdel(key, *replies[:130])  # deleted by hand while pending
        await asyncio.sleep(0.15)
        counted = counter("writer_deleted_pending_total")

        async def done() -> bool:
            await writer.step()
            pending = (await redis.xpending(key, c.CONSUMER_GROUP))["pending"]
            return bool(pending == 0 and await redis.xlen(key) == 0)

        await wait_for(done, timeout=15, interval=0)
    finally:
        await r.aclose()
        await store.close()
    stored = {row[0] for row in await pg.fetch("SELECT registration_id FROM registrations")}
    assert stored == set(ids)  # the dead writer's live entries were reclaimed and written
    recorded = await pg.fetchval(
        "SELECT count(*) FROM dead_letters WHERE reason = 'deleted_while_pending'"
        " AND registration_id IS NULL AND payload IS NULL")
    assert recorded == 130
    assert counter("writer_deleted_pending_total") - counted == 130


# --- PostgreSQL ----------------------------------------------------------------------
@pytest.fixture
async def private_database(
    private_postgres: list[devstack.Service], settings: Settings
) -> AsyncIterator[Settings]:
    from gateway.runner import prepare

    url = private_postgres[0].url.rpartition("/")[0] + "/intake"
    admin = await asyncpg.connect(private_postgres[0].url)
    try:
        await admin.execute("DROP DATABASE IF EXISTS intake WITH (FORCE)")
        await admin.execute("CREATE DATABASE intake")
    finally:
        await admin.close()
    ours = settings.with_changes(database_url=url, pg_command_timeout_s=2.0,
                                 pg_acquire_timeout_s=2.0, writer_metrics_port=0)
    await prepare(ours, dev_sites=True)
    yield ours


async def test_postgres_down_intake_keeps_answering_202_and_nothing_is_acked_before_commit(
    private_database: Settings, private_postgres: list[devstack.Service], redis: Any
) -> None:
    s = private_database
    key = s.stream_key(0)
    client = await make_client(s)
    stop = asyncio.Event()
    writer = asyncio.create_task(run_writer(s, stop))
    gen = Generator(81)
    accepted: list[str] = []
    try:
        for _ in range(5):
            resp = await post(client, gen.person())
            accepted.append((await resp.json())["registration_id"])
        await wait_for(lambda: _xlen_is(redis, key, 0), timeout=15)
        await asyncio.to_thread(private_postgres[0].kill)
        lengths = []
        for _ in range(20):
            resp = await post(client, gen.person())
            assert resp.status == 202
            accepted.append((await resp.json())["registration_id"])
            lengths.append(int(await redis.xlen(key)))
            await asyncio.sleep(0.05)
        assert lengths == sorted(lengths) and lengths[-1] == 20  # nothing left the stream
        assert (await redis.xpending(key, c.CONSUMER_GROUP))["pending"] >= 1  # in hand, not acked
        cluster = private_postgres[0].data_dir
        assert cluster is not None
        private_postgres[0] = await asyncio.to_thread(
            devstack.start_postgres, cluster, private_postgres[0].port)
        await wait_for(lambda: _xlen_is(redis, key, 0), timeout=30, interval=0.2)
    finally:
        stop.set()
        await asyncio.wait_for(writer, 30)
        await client.close()
    conn = await asyncpg.connect(s.database_url)
    try:
        stored = [r[0] for r in await conn.fetch("SELECT registration_id FROM registrations")]
    finally:
        await conn.close()
    assert sorted(stored) == sorted(accepted)


async def _xlen_is(redis: Any, key: str, n: int) -> bool:
    return bool(await redis.xlen(key) == n)


async def test_a_lock_held_on_the_table_times_out_statements_and_pool_waits(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    s = settings.with_changes(pg_command_timeout_s=1.0, pg_acquire_timeout_s=1.0)
    await append_people(s, 2, seed=91)
    writer, r, store = await make_writer(s)
    client = await make_client(s)
    try:
        entries = await writer.streams.read_new(10, 100)
        await writer.process(entries[:1])  # one stored, so its status look-up needs the table
        stored_id = await pg.fetchval("SELECT registration_id FROM registrations")
        row = coerce(entries[1]).row
        lock = pg.transaction()
        await lock.start()
        await pg.execute("LOCK TABLE registrations IN ACCESS EXCLUSIVE MODE")
        try:
            started = time.monotonic()
            with pytest.raises(DependencyUnavailable):
                await store.write_rows([row])
            assert time.monotonic() - started < 2.0
            started = time.monotonic()
            resp = await client.get(f"/v1/registrations/{stored_id}")
            assert resp.status == 503 and resp.headers["Retry-After"]
            assert time.monotonic() - started < 2.0
        finally:
            await lock.rollback()
        # Pool acquisition: every connection busy, the next caller gets an error in time.
        small = Store(await connect_pool(s.with_changes(pg_pool_max=1)), s.pg_acquire_timeout_s)
        try:
            async with small.pool.acquire():
                started = time.monotonic()
                with pytest.raises(DependencyUnavailable):
                    async with small.connection():
                        pass
                assert time.monotonic() - started < 2.0
        finally:
            await small.close()
        await store.write_rows([row])  # and once the lock is gone, the write goes through
    finally:
        await client.close()
        await r.aclose()
        await store.close()


# --- the gateway process and its clients ----------------------------------------------
def _gateway_env(settings: Settings, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GATEWAY_") and k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(REDIS_URL=settings.redis_url, DATABASE_URL=settings.database_url,
               GATEWAY_PORT=str(port), GATEWAY_KEY_PREFIX=settings.key_prefix,
               GATEWAY_LOG_LEVEL="WARNING", GATEWAY_SHUTDOWN_GRACE_S="5")
    return env


def _request_head(body: bytes, channel: str = "web") -> bytes:
    return (f"POST /v1/registrations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nX-Channel: {channel}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()


async def _ready(port: int, proc: asyncio.subprocess.Process) -> bool:
    assert proc.returncode is None, "the gateway exited"
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status = await reader.readline()
    writer.close()
    return status.startswith(b"HTTP/1.1 200")


async def test_sigterm_lets_in_flight_requests_finish_and_takes_no_new_ones(
    settings: Settings, redis: Any
) -> None:
    port = devstack.free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", env=_gateway_env(settings, port),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gen = Generator(101)
    try:
        await wait_for(lambda: _ready(port, proc), timeout=60, interval=0.2)
        bodies = [orjson.dumps(gen.person()) for _ in range(4)]
        conns = []
        for body in bodies:  # each request has started: head and half its body sent
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_request_head(body) + body[: len(body) // 2])
            await writer.drain()
            conns.append((reader, writer))
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        # Draining: a new request is answered at once, 503 with Retry-After.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = orjson.dumps(gen.person())
        writer.write(_request_head(body) + body)
        head = await asyncio.wait_for(reader.read(4096), 5)
        assert head.startswith(b"HTTP/1.1 503") and b"Retry-After" in head
        assert b"Connection: close" in head  # reconnect, to a process that is not leaving
        writer.close()
        answers = []
        for (reader, writer), body in zip(conns, bodies, strict=True):
            writer.write(body[len(body) // 2:])
            await writer.drain()
            answers.append(await asyncio.wait_for(reader.read(65536), 10))
            writer.close()
        assert all(a.startswith(b"HTTP/1.1 202") for a in answers), answers
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert await redis.xlen(settings.stream_key(0)) == 4


async def test_clients_that_abandon_requests_never_make_another_request_read_their_reply(
    settings: Settings
) -> None:
    client = await make_client(settings)
    port = client.server.port
    assert port is not None
    polite = list(Generator(102).submissions(40, retry_share=0, respell_share=0,
                                             conflict_share=0, invalid_share=0))
    rude = list(Generator(103).submissions(30, retry_share=0, respell_share=0,
                                           conflict_share=0, invalid_share=0))

    async def abandon(body: bytes, mode: int) -> None:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(  # RST on close, like a dropped phone
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.write(_request_head(body) + (body[: len(body) // 2] if mode == 0 else body))
        await writer.drain()
        await asyncio.sleep(0.001 * mode)
        writer.transport.abort()

    async def ask(sub: Any) -> tuple[int, str]:
        resp = await post(client, sub.body)
        return resp.status, (await resp.json())["registration_id"]

    try:
        asks = [asyncio.create_task(ask(s)) for s in polite]
        await asyncio.gather(*asks, *(abandon(orjson.dumps(s.body), i % 3)
                                      for i, s in enumerate(rude)))
        first = [task.result() for task in asks]
        assert {status for status, _ in first} == {202}
        # Each person's replay names the id that person was given: no crossed replies.
        again = await asyncio.gather(*(ask(s) for s in polite))
        assert again == [(200, rid) for _, rid in first]
        # The abandoned people, now patient: queued once at most, each with their own id.
        late = await asyncio.gather(*(ask(s) for s in rude))
        assert {status for status, _ in late} <= {200, 202}
        assert await asyncio.gather(*(ask(s) for s in rude)) == [(200, rid) for _, rid in late]
        assert len({rid for _, rid in first + late}) == len(polite) + len(rude)
    finally:
        await client.close()


# --- backpressure --------------------------------------------------------------------
async def test_above_the_high_water_mark_the_gateway_sheds_503_with_jittered_retry_after(
    settings: Settings
) -> None:
    s = settings.with_changes(backlog_high_water=10, retry_after_max_s=60)
    client = await make_client(s)
    gen = Generator(111)
    try:
        for _ in range(12):
            assert (await post(client, gen.person())).status == 202
        await client.app[RUNTIME].backlog.sample()  # no writer: the backlog is 12
        waits = []
        for _ in range(25):
            resp = await post(client, gen.person())
            assert resp.status == 503 and (await resp.json())["error"] == "overloaded"
            waits.append(int(resp.headers["Retry-After"]))
        # No drain observed: the wait is the maximum, spread so retries do not bunch.
        assert all(0.8 * 60 - 1 <= w <= 1.3 * 60 for w in waits)
        assert len(set(waits)) >= 5
        ready = await client.get("/readyz")
        assert ready.status == 503 and not (await ready.json())["checks"]["backlog_under_mark"]
    finally:
        await client.close()


def test_retry_after_follows_backlog_over_drain_rate_with_jitter() -> None:
    monitor = BacklogMonitor(None, Settings(backlog_high_water=500, retry_after_max_s=120))  # type: ignore[arg-type]
    monitor.state.depth, monitor.state.drain_rate = 1000, 55.0  # 550 over 90% of the mark
    waits = [monitor.retry_after() for _ in range(300)]
    assert min(waits) >= 8 and max(waits) <= 13  # 10 s, jittered by 0.8-1.3
    assert len(set(waits)) >= 4
    monitor.state.drain_rate = 275.0  # drains five times faster: a shorter wait
    assert max(monitor.retry_after() for _ in range(100)) <= 3
