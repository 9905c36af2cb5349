"""``gateway demo``: send realistic registrations to a running gateway over HTTP, then
check that every accepted one reached PostgreSQL exactly once.

Deterministic for a seed: running it twice with the same seed sends the same people,
so the second run is answered with 200 replays and adds no rows.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from typing import Any

import aiohttp
import orjson

from gateway.settings import Settings


async def send_all(url: str, count: int, seed: int, concurrency: int) -> tuple[Counter[str], dict[str, str], int]:
    from gateway.datagen import Generator

    submissions = list(Generator(seed).submissions(count))
    tally: Counter[str] = Counter()
    accepted: dict[str, str] = {}  # registration_id -> "202" | "200"
    unexpected = 0
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for s in submissions:
        queue.put_nowait(s)
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal unexpected
        while True:
            try:
                sub = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            headers = {"Content-Type": "application/json", "X-Channel": sub.channel}
            if sub.idempotency_key:
                headers["Idempotency-Key"] = sub.idempotency_key
            data = sub.body if isinstance(sub.body, bytes) else orjson.dumps(sub.body)
            for attempt in range(5):
                try:
                    async with session.post(url + "/v1/registrations", data=data, headers=headers) as resp:
                        body = await resp.read()
                        status = resp.status
                        retry_after = resp.headers.get("Retry-After")
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    status, body, retry_after = 0, b"", "1"
                if status in (429, 503, 0) and attempt < 4:
                    await asyncio.sleep(min(float(retry_after or 1), 5))
                    continue
                break
            tally[str(status)] += 1
            if status in (200, 202):
                accepted[orjson.loads(body)["registration_id"]] = str(status)
            expected = {"invalid": (400,), "conflict": (409,)}.get(sub.kind, (200, 202))
            if status not in expected:
                unexpected += 1

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return tally, accepted, unexpected


async def wait_drained(url: str, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    backlog = -1
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(url + "/readyz") as resp:
                backlog = int((await resp.json()).get("backlog", -1))
            if backlog == 0:
                return 0
            await asyncio.sleep(0.5)
    return backlog


async def demo(args: argparse.Namespace) -> int:
    from gateway.runner import apply_stack_env
    from gateway.store import Store

    stack = apply_stack_env(args.data_dir)
    url = (args.url or stack.get("GATEWAY_URL") or "http://127.0.0.1:8080").rstrip("/")
    started = time.perf_counter()
    tally, accepted, unexpected = await send_all(url, args.count, args.seed, args.concurrency)
    elapsed = time.perf_counter() - started
    print(f"sent {args.count} registrations in {elapsed:.1f}s ({args.count / elapsed:.0f}/s)")
    print(
        f"  202 accepted: {tally['202']}   200 replayed: {tally['200']}   409 conflicts: {tally['409']}"
        f"   400 rejected: {tally['400']}   other: {sum(v for k, v in tally.items() if k not in ('200', '202', '409', '400'))}"
    )
    print(f"  answers that did not match the submission's kind: {unexpected}")
    backlog = await wait_drained(url, args.drain_timeout)
    if backlog != 0:
        print(f"backlog not drained after {args.drain_timeout}s: {backlog} entries")
        return 1
    store = await Store.open(Settings.from_env(), migrate_schema=False)
    try:
        stored, dead = await store.find(list(accepted))
    finally:
        await store.close()
    missing = [rid for rid in accepted if rid not in stored and rid not in dead]
    print(
        f"in PostgreSQL: {len(stored)} of {len(accepted)} accepted registrations stored once"
        f" (registration_id is the primary key), {len(dead)} dead-lettered, {len(missing)} missing"
    )
    return 0 if not missing and unexpected == 0 else 1


def cmd_demo(args: argparse.Namespace) -> int:
    return asyncio.run(demo(args))


def add_commands(sub: Any) -> None:
    p = sub.add_parser("demo", help="send realistic registrations and check they were stored")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--url", help="gateway address (default: the one `gateway run` started, else :8080)")
    p.add_argument("--data-dir", default=".data", help="where `gateway run` keeps its data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--drain-timeout", type=float, default=120.0)
    p.set_defaults(func=cmd_demo)
