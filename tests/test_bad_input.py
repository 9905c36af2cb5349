"""Bad input never causes a 500, never appends anything, and never takes the process down.

In-process tests use the ``client`` fixture (real HTTP over loopback to the app, real
Redis and PostgreSQL); slow clients, timeouts and memory use a real
``python -m gateway serve`` process.
"""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from gateway.settings import Settings
from tests.helpers import valid_body
from tests.live import LiveGateway, start_gateway

JSON = {"Content-Type": "application/json", "X-Channel": "web"}


async def post_raw(
    client: TestClient[Any, Any], data: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    async with client.post("/v1/registrations", data=data, headers=headers or JSON) as resp:
        raw = await resp.read()
        assert resp.content_type == "application/json", raw[:200]
        return resp.status, orjson.loads(raw)


async def post(client: TestClient[Any, Any], body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    return await post_raw(client, orjson.dumps(body), headers)


async def assert_nothing_queued(redis: aioredis.Redis, settings: Settings) -> None:
    assert await redis.exists(settings.stream_key(0)) == 0


def body_with(path: str, value: Any, seed: int = 11) -> dict[str, Any]:
    body = valid_body(seed)
    *parents, leaf = path.split(".")
    target = body
    for name in parents:
        target = target.setdefault(name, {})
    target[leaf] = value
    return body


STRING_FIELDS = (
    "full_name", "date_of_birth", "gender", "phone", "id_document.type", "id_document.number",
    "health_insurance_number", "email", "address.province_code", "address.ward_code",
    "address.street", "priority_group", "occupation", "site_id", "preferred_date",
    "preferred_session",
)
OBJECT_FIELDS = ("id_document", "address", "screening")
BOOLEAN_FIELDS = ("consent", "screening.pregnant")


# --- malformed JSON, nesting, numbers, duplicates, encodings ---------------------------
# Each test runs many cases against one gateway (a fresh database per test is the slow
# part) and reports every case that misbehaved, not just the first.

UNPARSEABLE = {
    "empty": b"", "open-brace": b"{", "not-json": b"{not json",
    "trailing-garbage": b'{"full_name": "A"} trailing', "bom": b"\xef\xbb\xbf{}",
    "invalid-utf8": b'{"full_name": "\xff\xfe"}', "nan": b"NaN", "infinite-number": b'{"phone": 1e999}',
    "nested-arrays-5000": b"[" * 5000 + b"]" * 5000,
    "nested-objects-2000": b'{"a":' * 2000 + b"1" + b"}" * 2000,
    "lone-surrogate-escape": b'{"full_name": "\\ud800"}',
    "encoded-surrogate": b'{"full_name": "\xed\xa0\x80"}',
    "raw-nul": b'{"full_name": "x\x00y"}', "raw-control": b'{"full_name": "x\x1fy"}',
    "10k-digit-number": b"1" * 10_000,
}


async def test_unparseable_bodies_are_400_naming_the_body(
    client: TestClient[Any, Any], redis: aioredis.Redis, settings: Settings
) -> None:
    wrong = {}
    for name, raw in UNPARSEABLE.items():
        status, answer = await post_raw(client, raw)
        if status != 400 or "body" not in answer.get("fields", {}):
            wrong[name] = (status, answer)
    assert not wrong
    await assert_nothing_queued(redis, settings)


async def test_deep_nesting_inside_a_field_is_a_wrong_type(
    client: TestClient[Any, Any], redis: aioredis.Redis, settings: Settings
) -> None:
    deep = b"[" * 1000 + b"]" * 1000  # just under orjson's depth limit: it parses
    wrong = {}
    for path in ("full_name", "screening", "id_document", "address.street", "consent"):
        raw = orjson.dumps(body_with(path, "@DEEP@")).replace(b'"@DEEP@"', deep)
        status, answer = await post_raw(client, raw)
        if status != 400 or path not in answer["fields"]:
            wrong[path] = (status, answer)
    assert not wrong
    await assert_nothing_queued(redis, settings)


async def test_huge_numbers_are_a_wrong_type(
    client: TestClient[Any, Any], redis: aioredis.Redis, settings: Settings
) -> None:
    cases = [
        ("phone", b"123456789012345678901234567890"), ("id_document.number", b"18446744073709551615"),
        ("consent", b"1" + b"0" * 300), ("address.ward_code", b"-9223372036854775809"),
        ("date_of_birth", b"1.7976931348623157e308"), ("screening.pregnant", b"1e-400"),
    ]
    wrong = {}
    for path, number in cases:
        raw = orjson.dumps(body_with(path, "@NUM@")).replace(b'"@NUM@"', number)
        status, answer = await post_raw(client, raw)
        if status != 400 or answer["fields"].get(path, {}).get("code") != "wrong_type":
            wrong[path] = (status, answer)
    assert not wrong
    await assert_nothing_queued(redis, settings)


async def test_duplicate_keys_the_last_one_is_validated(
    client: TestClient[Any, Any], redis: aioredis.Redis, settings: Settings
) -> None:
    """RFC 8259 leaves duplicate names open; orjson keeps the last, and that is the value
    validated, normalised and stored: what is checked is what is kept."""
    good = orjson.dumps(valid_body(12))
    bad_last = good[:-1] + b', "phone": 912345678}'
    status, answer = await post_raw(client, bad_last)
    assert status == 400 and answer["fields"]["phone"]["code"] == "wrong_type"
    await assert_nothing_queued(redis, settings)
    bad_first = b'{"phone": 912345678, "consent": false, ' + good[1:]
    status, _ = await post_raw(client, bad_first)
    assert status == 202


async def test_control_and_invisible_characters_are_refused_in_every_string_field(
    client: TestClient[Any, Any], redis: aioredis.Redis, settings: Settings
) -> None:
    chars = {"nul": "\u0000", "bell": "\u0007", "del": "\u007f", "zero-width-space": "\u200b",
             "bidi-override": "\u202e", "bom": "\ufeff"}
    wrong = {}
    for path in STRING_FIELDS:
        for name, char in chars.items():
            status, answer = await post(client, body_with(path, f"ab{char}12"))
            if status != 400 or path not in answer["fields"]:
                wrong[f"{path}/{name}"] = (status, answer)
    status, answer = await post(client, body_with("full_name", "Nguyễn 😀 An"))
    if status != 400 or answer["fields"]["full_name"]["code"] != "invalid_characters":
        wrong["full_name/emoji"] = (status, answer)
    assert not wrong
    await assert_nothing_queued(redis, settings)


# --- wrong types -----------------------------------------------------------------------

def _wrong_types() -> list[tuple[str, Any]]:
    cases: list[tuple[str, Any]] = []
    for path in STRING_FIELDS:
        cases += [(path, v) for v in (12345, 1.5, True, [], ["a"], {}, {"a": "b"})]
    for path in OBJECT_FIELDS:
        cases += [(path, v) for v in ("x", 7, False, [], [{}])]
    for path in BOOLEAN_FIELDS:
        cases += [(path, v) for v in ("true", 1, 0, [], {}, "yes")]
    # The header names the channel, yet a wrong one in the body is refused, not ignored.
    cases += [("channel", v) for v in (3, [], {"web": True}, "fax")]
    return cases


async def test_a_wrong_type_in_any_field_is_400_naming_it(
    client: TestClient[Any, Any], redis: aioredis.Redis, settings: Settings
) -> None:
    wrong = {}
    for path, value in _wrong_types():
        status, answer = await post(client, body_with(path, value))
        if status != 400 or path not in answer["fields"]:
            wrong[f"{path}={value!r}"] = (status, answer)
    for body in ([], [{}], "registration", 42, None, True):
        status, answer = await post(client, body)
        if status != 400 or "body" not in answer["fields"]:
            wrong[f"body={body!r}"] = (status, answer)
    assert not wrong
    await assert_nothing_queued(redis, settings)


async def test_thousands_of_unknown_fields_are_reported_a_few_at_a_time(
    client: TestClient[Any, Any], redis: aioredis.Redis, settings: Settings
) -> None:
    body = valid_body(13)
    body.update({f"x{i}": i for i in range(1000)})
    status, answer = await post(client, body)
    assert status == 400 and len(answer["fields"]) < 40
    await assert_nothing_queued(redis, settings)


async def test_odd_headers_are_4xx_or_ignored_never_5xx(
    client: TestClient[Any, Any], redis: aioredis.Redis, settings: Settings
) -> None:
    cases = {
        "long-idempotency-key": ({"Idempotency-Key": "k" * 129}, 400),
        "non-ascii-idempotency-key": ({"Idempotency-Key": "ключ"}, 400),
        "unknown-channel": ({"X-Channel": "fax"}, 400),
        "odd-accept-language": ({"Accept-Language": "vi;q=x, *;q=" + "9" * 500}, 202),
    }
    wrong = {}
    for name, (headers, expected) in cases.items():
        async with client.post("/v1/registrations", data=orjson.dumps(valid_body(14)),
                               headers={**JSON, **headers}) as resp:
            answer = await resp.json()
            if resp.status != expected or (expected == 400 and not answer["fields"]):
                wrong[name] = (resp.status, answer)
    assert not wrong


# --- size, framing, encoding, content type ----------------------------------------------

async def raw_exchange(host: str, port: int, payload: bytes, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """Send raw bytes; return the status and body of the first response."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(payload)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next((int(line.split(":", 1)[1]) for line in lines
                       if line.lower().startswith("content-length:")), 0)
        body = await asyncio.wait_for(reader.readexactly(length), timeout_s)
        return status, body
    finally:
        writer.close()


def request_head(extra: str) -> bytes:
    return ("POST /v1/registrations HTTP/1.1\r\nHost: localhost\r\n"
            "Content-Type: application/json\r\nX-Channel: web\r\n" + extra + "\r\n").encode()


async def test_oversize_bodies_are_413_however_they_arrive(
    client: TestClient[Any, Any], redis: aioredis.Redis, settings: Settings
) -> None:
    # Declared too large: refused at once, without waiting for a body that never comes.
    started = time.monotonic()
    status, body = await raw_exchange(
        client.host, client.port, request_head("Content-Length: 50000000\r\n") + b'{"full_name":'
    )
    assert status == 413 and orjson.loads(body)["error"] == "body_too_large"
    assert time.monotonic() - started < 3.0
    # Sent with a Content-Length one byte over.
    big = orjson.dumps(body_with("occupation", "a" * settings.max_body_bytes))
    status, answer = await post_raw(client, big)
    assert status == 413 and answer["error"] == "body_too_large"
    # Chunked, no Content-Length: counted as it arrives.
    chunk = b"a" * 4096
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8)) + b"0\r\n\r\n"
    status, body = await raw_exchange(
        client.host, client.port, request_head("Transfer-Encoding: chunked\r\n") + chunks
    )
    assert status == 413 and orjson.loads(body)["error"] == "body_too_large"
    # Small on the wire, 10 MB inflated: the limit applies to the inflated body.
    bomb = zlib.compress(b'{"full_name": "' + b" " * 10_000_000 + b'"}', 9)
    assert len(bomb) < settings.max_body_bytes
    status, answer = await post_raw(client, bomb, {**JSON, "Content-Encoding": "deflate"})
    assert status == 413 and answer["error"] == "body_too_large"
    await assert_nothing_queued(redis, settings)


async def test_broken_framing_or_compression_is_4xx(
    client: TestClient[Any, Any], redis: aioredis.Redis, settings: Settings
) -> None:
    framings = {"non-hex-size": b"zz\r\nabc\r\n0\r\n\r\n", "short-chunk": b"5\r\nabc\r\n0\r\n\r\n",
                "absurd-size": b"fffffffffffffffffff\r\n{\r\n0\r\n\r\n"}
    wrong = {}
    for name, framing in framings.items():
        status, _ = await raw_exchange(
            client.host, client.port, request_head("Transfer-Encoding: chunked\r\n") + framing
        )
        if not 400 <= status < 500:
            wrong[name] = status
    corrupt = b"this was never gzip data " * 4
    status, answer = await post_raw(client, corrupt, {**JSON, "Content-Encoding": "gzip"})
    if status != 400 or "body" not in answer["fields"]:
        wrong["corrupt-gzip"] = (status, answer)
    assert not wrong
    async with client.get("/healthz") as resp:
        assert resp.status == 200
    await assert_nothing_queued(redis, settings)


async def test_chunked_compressed_and_charset_spellings_of_a_valid_body_are_accepted(
    client: TestClient[Any, Any],
) -> None:
    data = orjson.dumps(valid_body(15))

    async def pieces() -> Any:
        for i in range(0, len(data), 50):
            yield data[i:i + 50]

    async with client.post("/v1/registrations", data=pieces(), headers=JSON) as resp:
        assert resp.status == 202
        assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
    status, _ = await post_raw(client, gzip.compress(orjson.dumps(valid_body(17))),
                               {**JSON, "Content-Encoding": "gzip"})
    assert status == 202
    headers = {"X-Channel": "web", "Content-Type": "application/json; charset=utf-8"}
    assert (await post(client, valid_body(19), headers))[0] == 202


async def test_wrong_content_type_is_415(
    client: TestClient[Any, Any], redis: aioredis.Redis, settings: Settings
) -> None:
    wrong = {}
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded",
                         "multipart/form-data; boundary=x", "application/xml", "application/jsonp"):
        headers = {"X-Channel": "web"} | ({"Content-Type": content_type} if content_type else {})
        async with client.post("/v1/registrations", data=orjson.dumps(valid_body(18)),
                               headers=headers, skip_auto_headers=["Content-Type"]) as resp:
            answer = await resp.json()
            if resp.status != 415 or answer["error"] != "unsupported_media_type":
                wrong[content_type] = (resp.status, answer)
    assert not wrong
    await assert_nothing_queued(redis, settings)


# --- slow clients, a real process ---------------------------------------------------------

SLOW_ENV = {"GATEWAY_HEADER_TIMEOUT_S": "2", "GATEWAY_BODY_TIMEOUT_S": "2"}


@pytest.fixture
async def live(settings: Settings, tmp_path: Path) -> Any:
    gateway = await start_gateway(settings, tmp_path / "gateway.log", **SLOW_ENV)
    yield gateway
    assert gateway.alive(), "the gateway process died"
    gateway.stop()
    log = (tmp_path / "gateway.log").read_text()
    assert "Traceback" not in log and '"level":"error"' not in log, log[-3000:]


async def _trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float, stop_after_s: float) -> float:
    """Send a byte at a time; return how long until the server stopped taking them."""
    started = time.monotonic()
    for i in range(len(data)):
        if time.monotonic() - started > stop_after_s:
            break
        try:
            writer.write(data[i:i + 1])
            await writer.drain()
        except (ConnectionError, OSError):
            break
        if writer.transport.is_closing():
            break
        await asyncio.sleep(every_s)
    return time.monotonic() - started


async def test_headers_sent_a_byte_at_a_time_are_cut_off_and_others_are_served(live: LiveGateway) -> None:
    head = request_head("Content-Length: 2\r\n" + "X-Padding: " + "p" * 200 + "\r\n")
    connections = [await asyncio.open_connection("127.0.0.1", live.port) for _ in range(20)]
    idle_reader, _idle_writer = await asyncio.open_connection("127.0.0.1", live.port)

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[float, bytes]:
        sender = asyncio.create_task(_trickle(writer, head, 0.1, 15))
        started = time.monotonic()
        answer = await asyncio.wait_for(reader.read(), 15)  # b"" once the server closes
        sender.cancel()
        return time.monotonic() - started, answer

    tasks = [asyncio.create_task(slow(r, w)) for r, w in connections]
    async with aiohttp.ClientSession() as session:
        await asyncio.sleep(0.5)
        started = time.monotonic()
        async with session.get(live.url + "/healthz") as resp:
            assert resp.status == 200
        assert time.monotonic() - started < 1.0
    results = await asyncio.gather(*tasks)
    for took, answer in results:
        assert answer == b""  # closed without a request ever being handled
        assert took < 2 + 3  # the header timeout plus scheduling slack, not 20+ s of trickle
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # silent connections too
    for _, writer in connections:
        writer.close()
    _idle_writer.close()


async def test_body_sent_a_byte_at_a_time_gets_408_and_nothing_is_queued(
    live: LiveGateway, redis: aioredis.Redis, settings: Settings
) -> None:
    data = orjson.dumps(valid_body(20))
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    writer.write(request_head(f"Content-Length: {len(data)}\r\n"))
    await writer.drain()
    started = time.monotonic()
    sender = asyncio.create_task(_trickle(writer, data, 0.1, 15))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    took = time.monotonic() - started
    assert head.startswith(b"HTTP/1.1 408"), head
    assert b"Connection: close" in head  # aiohttp then drains at most 10 s and closes
    assert 1.5 < took < 2 + 3
    sender.cancel()
    writer.close()
    await assert_nothing_queued(redis, settings)


def _bad_requests(max_body: int) -> list[tuple[bytes, dict[str, str]]]:
    good = orjson.dumps(valid_body(21))
    deep = b'{"full_name": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    cases: list[tuple[bytes, dict[str, str]]] = [
        (b"{not json", JSON),
        (deep, JSON),
        (b"[" * 5000, JSON),
        (good.replace(b'"consent":true', b'"consent":"yes"'), JSON),
        (orjson.dumps(body_with("full_name", "x\u0000" * 2000)), JSON),
        (orjson.dumps({f"k{i}": i for i in range(1500)}), JSON),
        (b"a" * (max_body + 100), JSON),
        (good, {"Content-Type": "text/plain"}),
        (zlib.compress(b" " * 2_000_000), {**JSON, "Content-Encoding": "deflate"}),
        (good[:-1] + b',"phone":1e300}', JSON),
    ]
    return cases


async def test_memory_stays_flat_over_thousands_of_bad_requests(
    live: LiveGateway, redis: aioredis.Redis, settings: Settings
) -> None:
    cases = _bad_requests(settings.max_body_bytes)
    statuses: dict[int, int] = {}

    async def blast(session: aiohttp.ClientSession, rounds: int) -> None:
        for i in range(rounds):
            data, headers = cases[i % len(cases)]
            async with session.post(live.url + "/v1/registrations", data=data, headers=headers) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as session:
        await asyncio.gather(*(blast(session, 40) for _ in range(10)))  # warm up: 400
        before = live.rss_kib()
        await asyncio.gather(*(blast(session, 300) for _ in range(10)))  # 3,000 more
        after = live.rss_kib()
        async with session.get(live.url + "/healthz") as resp:
            assert resp.status == 200
    print(f"gateway RSS {before} KiB after 400 bad requests, {after} KiB after 3,000 more")
    assert set(statuses) <= {400, 413, 415}, statuses
    assert sum(statuses.values()) == 3400
    # Generous: allocator noise and lazily built caches, not a leak of ~KB per request.
    assert after - before < 16 * 1024, (before, after)
    await assert_nothing_queued(redis, settings)
