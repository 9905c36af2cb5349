"""Identity numbers and phones never appear in logs, metrics or Redis key names.

A short load of realistic submissions (new, retried, respelled, conflicting, invalid) goes
over HTTP to a real gateway and a real writer, both logging at DEBUG to files, with the
rate limits on so their counters exist too. Then every log line, both /metrics pages and
every Redis key name of the deployment are searched for every identity number and every
phone that was sent, in every spelling (as typed, digits only, national, 84…, E.164).
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import redis.asyncio as aioredis

from gateway.datagen import Generator, Submission, phone_spellings
from gateway.devstack import free_port
from gateway.settings import Settings
from tests.conftest import wait_for
from tests.live import start_gateway, start_writer

SUBMISSIONS = 400
MIN_NEEDLE = 7  # shorter strings (a mangled phone "12") would match by chance


def phone_forms(phone: str) -> set[str]:
    digits = "".join(ch for ch in phone if ch.isdigit())
    if digits.startswith("84") and len(digits) == 11:
        national = digits[2:]
    elif digits.startswith("0"):
        national = digits[1:]
    else:
        national = digits
    forms = {phone.strip(), digits, national, "0" + national, "84" + national, "+84" + national}
    if len(national) == 9:
        forms.update(phone_spellings("0" + national))
    return forms


def identity_forms(number: str) -> set[str]:
    bare = re.sub(r"[ .\-]", "", number)
    return {number.strip(), bare, bare.upper()}


def needles_of(submissions: list[Submission]) -> set[str]:
    found: set[str] = set()
    for sub in submissions:
        if not isinstance(sub.body, dict):
            continue
        phone = sub.body.get("phone")
        if isinstance(phone, str):
            found |= phone_forms(phone)
        doc = sub.body.get("id_document")
        if isinstance(doc, dict) and isinstance(doc.get("number"), str):
            found |= identity_forms(doc["number"])
        _, _, number = sub.identity.partition(":")
        if number:
            found |= identity_forms(number)
    return {n.lower() for n in found if len(n) >= MIN_NEEDLE}


def leak_finder(needles: set[str]) -> re.Pattern[str]:
    """One pattern for all needles; a needle made of digits must not be part of a longer
    run of digits (a float in /metrics, a millisecond timestamp in a stream id)."""
    parts = []
    for needle in sorted(needles, key=len, reverse=True):
        left = "(?<![0-9])" if needle[0].isdigit() else ""
        right = "(?![0-9])" if needle[-1].isdigit() else ""
        parts.append(left + re.escape(needle) + right)
    return re.compile("|".join(parts))


async def send_all(url: str, submissions: list[Submission]) -> Counter[int]:
    statuses: Counter[int] = Counter()
    ids: list[str] = []
    queue: asyncio.Queue[Submission] = asyncio.Queue()
    for sub in submissions:
        queue.put_nowait(sub)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            sub = queue.get_nowait()
            data = sub.body if isinstance(sub.body, bytes) else orjson.dumps(sub.body)
            headers = {"Content-Type": "application/json", "X-Channel": sub.channel}
            if sub.idempotency_key:
                headers["Idempotency-Key"] = sub.idempotency_key
            async with session.post(url + "/v1/registrations", data=data, headers=headers) as resp:
                answer = orjson.loads(await resp.read())
                statuses[resp.status] += 1
                if resp.status == 202:
                    ids.append(answer["registration_id"])

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(12)))
        for rid in ids[:50]:  # the status endpoint writes its own log lines
            async with session.get(f"{url}/v1/registrations/{rid}") as resp:
                assert resp.status == 200
    statuses[0] = len(ids)  # registrations queued
    return statuses


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        return await resp.text()


async def test_no_identity_number_or_phone_in_logs_metrics_or_key_names(
    settings: Settings, redis: aioredis.Redis, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    submissions = list(Generator(2024).submissions(
        SUBMISSIONS, retry_share=0.1, respell_share=0.1, conflict_share=0.05, invalid_share=0.1
    ))
    env = {"GATEWAY_LOG_LEVEL": "DEBUG", "GATEWAY_RATE_LIMIT_PER_IP": "100000",
           "GATEWAY_RATE_LIMIT_PER_PHONE": "2"}
    # A database rule that refuses some rows, so the writer's split-and-dead-letter path
    # runs too: Postgres puts the whole failing row in its error text.
    await pg.execute("ALTER TABLE registrations ADD CONSTRAINT privacy_probe "
                     "CHECK (occupation <> 'Hưu trí')")
    writer_metrics = free_port()
    gateway = await start_gateway(settings, tmp_path / "gateway.log", **env)
    writer = start_writer(settings, tmp_path / "writer.log", GATEWAY_WRITER_METRICS_PORT=str(writer_metrics),
                          **env)
    try:
        statuses = await send_all(gateway.url, submissions)
        queued = statuses.pop(0)
        assert statuses[202] > SUBMISSIONS // 2 and statuses[400] > 0, statuses
        assert statuses[429] > 0 and statuses[409] + statuses[200] > 0, statuses
        await wait_for(lambda: _drained(redis, settings), timeout=60)
        dead = await pg.fetchval("SELECT count(*) FROM dead_letters WHERE reason = 'rejected_by_database'")
        assert dead > 0 and await pg.fetchval("SELECT count(*) FROM registrations") + dead >= queued
        pages = [await scrape(gateway.url + "/metrics"),
                 await scrape(f"http://127.0.0.1:{writer_metrics}/metrics")]
        keys = [k.decode() async for k in redis.scan_iter(match=settings.key_prefix + "*", count=1000)]
    finally:
        gateway.stop()
        writer.stop()
    logs = {name: (tmp_path / name).read_text(encoding="utf-8") for name in ("gateway.log", "writer.log")}
    assert any(k.startswith(settings.key_prefix + "rate:{limits}:phone:") for k in keys)
    assert any(k.startswith(settings.key_prefix + "dedupe:") for k in keys)

    needles = needles_of(submissions)
    assert len(needles) > 1000
    finder = leak_finder(needles)
    sample = next(iter(needles))
    assert finder.search(f'{{"msg": "oops {sample} here"}}')  # the search itself works

    leaks = {}
    for name, text in [*logs.items(), ("gateway /metrics", pages[0]),
                       ("writer /metrics", pages[1]), ("redis keys", "\n".join(keys))]:
        for line in text.lower().splitlines():
            match = finder.search(line)
            if match:
                leaks.setdefault(name, []).append(match.group(0))
    assert not leaks, {name: found[:5] for name, found in leaks.items()}


async def _drained(redis: aioredis.Redis, settings: Settings) -> bool:
    return int(await redis.xlen(settings.stream_key(0))) == 0
