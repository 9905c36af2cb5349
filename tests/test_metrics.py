"""/metrics of the gateway and of the writer: the queue's state, the counters operators
alert on, no personal data in labels, and one answer for all processes behind a port."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from gateway import devstack
from gateway.settings import Settings
from gateway.writer import run_writer
from tests.conftest import make_client, wait_for
from tests.helpers import valid_body
from tests.test_writer import append_people

HEADERS = {"Content-Type": "application/json", "X-Channel": "web"}


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample, None when absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def scrape(client: Any) -> str:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return str(await response.text())


async def test_metrics_show_backlog_lag_and_oldest_age_of_queued_registrations(client: Any) -> None:
    before = await scrape(client)
    accepted_before = (
        sample(before, "gateway_http_requests_total", route="/v1/registrations", status="202") or 0
    )
    for seed in range(12):
        response = await client.post(
            "/v1/registrations", data=orjson.dumps(valid_body(700 + seed)), headers=HEADERS
        )
        assert response.status == 202
    await asyncio.sleep(0.05)
    text = await scrape(client)
    assert sample(text, "gateway_queue_backlog", shard="0") == 12
    assert sample(text, "gateway_queue_lag", shard="0") == 12
    assert sample(text, "gateway_queue_pending", shard="0") == 0
    assert sample(text, "gateway_queue_entries_added_total", shard="0") == 12
    assert 0 < (sample(text, "gateway_queue_oldest_age_seconds", shard="0") or 0) < 30
    assert sample(text, "gateway_writers_alive") == 0
    assert sample(text, "gateway_queue_drained_total") == 0
    assert sample(text, "gateway_dead_letters", state="held") == 0
    assert sample(text, "gateway_dependency_up", dependency="redis") == 1
    assert sample(text, "gateway_dependency_up", dependency="postgres") == 1
    accepted = sample(text, "gateway_http_requests_total", route="/v1/registrations", status="202")
    assert accepted == accepted_before + 12


async def test_metrics_count_replays_conflicts_and_shed_requests(settings: Settings) -> None:
    client = await make_client(settings.with_changes(backlog_high_water=3))
    try:
        before = await scrape(client)
        body = valid_body(31)
        assert (
            await client.post("/v1/registrations", data=orjson.dumps(body), headers=HEADERS)
        ).status == 202
        assert (
            await client.post("/v1/registrations", data=orjson.dumps(body), headers=HEADERS)
        ).status == 200
        changed = dict(body, occupation=body["occupation"] + " (changed)")
        assert (
            await client.post("/v1/registrations", data=orjson.dumps(changed), headers=HEADERS)
        ).status == 409
        for seed in range(2):
            await client.post(
                "/v1/registrations", data=orjson.dumps(valid_body(40 + seed)), headers=HEADERS
            )

        seeds = iter(range(100, 200))

        async def shed() -> bool:
            body = valid_body(next(seeds))
            response = await client.post(
                "/v1/registrations", data=orjson.dumps(body), headers=HEADERS
            )
            return response.status == 503

        await wait_for(shed, timeout=10, interval=0.2)
        after = await scrape(client)
    finally:
        await client.close()

    def delta(name: str, **labels: str) -> float:
        return (sample(after, name, **labels) or 0) - (sample(before, name, **labels) or 0)

    assert delta("gateway_registrations_total", outcome="replayed") == 1
    assert delta("gateway_registrations_total", outcome="conflict") == 1
    assert delta("gateway_shed_total", reason="backlog") >= 1
    assert delta("gateway_http_requests_total", route="/v1/registrations", status="503") >= 1
    assert delta("gateway_http_requests_total", route="/v1/registrations", status="409") == 1


async def test_metrics_labels_never_carry_personal_data(client: Any) -> None:
    bodies = [valid_body(900 + seed) for seed in range(5)]
    for body in bodies:
        await client.post("/v1/registrations", data=orjson.dumps(body), headers=HEADERS)
    await client.post("/v1/registrations", data=b'{"phone": "0912345678"', headers=HEADERS)
    text = await scrape(client)
    labels = {
        v
        for f in text_string_to_metric_families(text)
        for s in f.samples
        for v in s.labels.values()
    }
    for body in bodies:
        secrets = {body["phone"], body["id_document"]["number"], body["full_name"]}
        secrets |= {body["phone"].lstrip("+0").removeprefix("84")}
        assert not any(secret in label for secret in secrets for label in labels)
        assert not any(secret in text for secret in secrets)


async def test_writer_serves_metrics_with_rows_batches_and_dead_letters(
    settings: Settings, redis: Any
) -> None:
    port = devstack.free_port()
    settings = settings.with_changes(writer_metrics_port=port)
    await append_people(settings, 30)
    await redis.xadd(settings.stream_key(0), {b"p": b"not json", b"t": b"tok", b"a": b"x"})
    stop = asyncio.Event()
    task = asyncio.create_task(run_writer(settings, stop))
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        async with aiohttp.ClientSession() as session:

            async def drained() -> str | None:
                try:
                    async with session.get(url) as response:
                        text = await response.text()
                except aiohttp.ClientConnectionError:
                    return None
                held = sample(text, "gateway_dead_letters", state="held", reason="malformed")
                empty = sample(text, "gateway_queue_backlog", shard="0") == 0
                return text if empty and held == 1 else None

            text = await wait_for(drained, timeout=30, interval=0.3)
    finally:
        stop.set()
        stats = await asyncio.wait_for(task, timeout=30)
    assert stats.committed == 30
    assert (sample(text, "writer_rows_total") or 0) >= 30
    assert (sample(text, "writer_batch_size_count") or 0) >= 1
    assert (sample(text, "writer_commit_seconds_count") or 0) >= 1
    assert (sample(text, "writer_dead_letters_total", reason="malformed") or 0) >= 1
    assert sample(text, "gateway_writers_alive") == 1
    assert sample(text, "gateway_dependency_up", dependency="postgres") == 1


async def test_gateway_workers_answer_metrics_for_all_processes(
    settings: Settings, tmp_path: Path
) -> None:
    """``serve --workers 2``: the kernel spreads connections over two processes, and each
    one answers /metrics with the sum of both; the supervisor removes its metrics
    directory when it stops."""
    port = devstack.free_port()
    env = dict(
        os.environ,
        REDIS_URL=settings.redis_url,
        DATABASE_URL=settings.database_url,
        GATEWAY_KEY_PREFIX=settings.key_prefix,
        GATEWAY_PORT=str(port),
        TMPDIR=str(tmp_path),
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--workers",
        "2",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        fresh = aiohttp.TCPConnector(force_close=True)  # a new connection (and worker) each time
        async with aiohttp.ClientSession(connector=fresh) as session:

            async def ready() -> bool:
                try:
                    async with session.get(base + "/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_for(ready, timeout=60, interval=0.3)
            dirs = list(tmp_path.glob("gateway-gateway-metrics-*"))
            assert len(dirs) == 1
            for _ in range(30):
                async with session.get(base + "/healthz") as response:
                    assert response.status == 200
            counts = []
            for _ in range(6):
                async with session.get(base + "/metrics") as response:
                    text = await response.text()
                counts.append(
                    sample(text, "gateway_http_requests_total", route="/healthz", status="200")
                )
        pids = {p.name.rsplit("_", 1)[-1] for p in dirs[0].glob("*.db")}
        assert len(pids) == 2
        assert counts == [30.0] * 6
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), timeout=40)
    assert proc.returncode == 0
    assert not dirs[0].exists()


def test_supervisor_empties_a_given_metrics_directory(tmp_path: Path, monkeypatch: Any) -> None:
    from gateway import runner

    given = tmp_path / "metrics"
    given.mkdir()
    (given / "counter_12345.db").write_bytes(b"stale")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(given))
    path, made = runner._metrics_dir("gateway")
    assert (path, made) == (given, False)
    assert list(given.iterdir()) == []
