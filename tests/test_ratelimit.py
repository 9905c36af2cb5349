"""Rate limits per client address and per phone: shared in Redis, coalesced, private."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from gateway import constants as c
from gateway.devstack import free_port
from gateway.exceptions import ConfigurationError, DependencyUnavailable
from gateway.identity import Hasher
from gateway.ratelimit import (
    RateLimited,
    RateLimiter,
    client_address,
    counted_subject,
    parse_networks,
)
from gateway.settings import Settings
from tests.helpers import valid_body

JSON = {"Content-Type": "application/json", "X-Channel": "web"}


async def _client(settings: Settings) -> TestClient[Any, Any]:
    from gateway.app import create_app

    client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    return client


@pytest.fixture
async def limited(settings: Settings, request: pytest.FixtureRequest) -> AsyncIterator[TestClient[Any, Any]]:
    client = await _client(settings.with_changes(**request.param))
    yield client
    await client.close()


async def post(
    client: TestClient[Any, Any], body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with client.post("/v1/registrations", data=data, headers={**JSON, **(headers or {})}) as resp:
        return resp.status, orjson.loads(await resp.read()), dict(resp.headers)


async def rate_keys(redis: aioredis.Redis, settings: Settings) -> list[str]:
    return sorted([k.decode() async for k in redis.scan_iter(match=settings.key_prefix + "rate:*")])


async def test_limits_are_off_by_default_and_leave_no_counters(
    client: TestClient[Any, Any], redis: aioredis.Redis, settings: Settings
) -> None:
    statuses = [(await post(client, valid_body(seed)))[0] for seed in range(30)]
    statuses += [(await post(client, b"{broken"))[0] for _ in range(10)]
    assert 429 not in statuses
    assert await rate_keys(redis, settings) == []


@pytest.mark.parametrize("limited", [{"rate_limit_per_ip": 5}], indirect=True)
async def test_client_over_its_minute_gets_429_with_retry_after_and_nothing_is_queued(
    limited: TestClient[Any, Any], redis: aioredis.Redis, settings: Settings
) -> None:
    results = [await post(limited, valid_body(100 + i)) for i in range(8)]
    assert [status for status, _, _ in results] == [202] * 5 + [429] * 3
    for _, body, headers in results[5:]:
        assert body["error"] == "rate_limited"
        assert 1 <= int(headers["Retry-After"]) <= c.RATE_WINDOW_CLIENT_S + c.RATE_RETRY_JITTER_S
    assert await redis.xlen(settings.stream_key(0)) == 5


@pytest.mark.parametrize("limited", [{"rate_limit_per_ip": 3}], indirect=True)
async def test_refused_input_counts_against_the_client(limited: TestClient[Any, Any]) -> None:
    assert (await post(limited, b"{broken"))[0] == 400
    async with limited.post("/v1/registrations", data=b"{}", headers={"Content-Type": "text/plain"}) as resp:
        assert resp.status == 415
    bad = valid_body(1)
    bad["phone"] = 912345678
    assert (await post(limited, bad))[0] == 400
    status, body, _ = await post(limited, valid_body(2))
    assert status == 429 and body["error"] == "rate_limited"
    assert (await post(limited, b"{broken"))[0] == 429


@pytest.mark.parametrize(
    "limited", [{"rate_limit_per_phone": 2, "trusted_proxies": "127.0.0.1"}], indirect=True
)
async def test_phone_limit_holds_across_addresses_and_spellings(
    limited: TestClient[Any, Any], redis: aioredis.Redis, settings: Settings
) -> None:
    spellings = ["0912345678", "+84 912 345 678", "84912345678"]
    statuses = []
    for i, phone in enumerate(spellings):
        body = valid_body(200 + i)
        body["phone"] = phone
        status, _, headers = await post(limited, body, {"X-Forwarded-For": f"203.0.113.{i + 1}"})
        statuses.append(status)
    assert statuses == [202, 202, 429]
    assert int(headers["Retry-After"]) > c.RATE_WINDOW_CLIENT_S  # the phone's hour, not a minute
    other = valid_body(210)
    other["phone"] = "0987654321"
    assert (await post(limited, other))[0] == 202
    assert await redis.xlen(settings.stream_key(0)) == 3


async def test_counts_are_shared_by_separate_gateway_instances(settings: Settings) -> None:
    limited = settings.with_changes(rate_limit_per_ip=4)
    first, second = await _client(limited), await _client(limited)
    try:
        statuses = []
        for i in range(6):
            statuses.append((await post((first, second)[i % 2], valid_body(300 + i)))[0])
        assert statuses == [202] * 4 + [429] * 2
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize(
    "limited", [{"rate_limit_per_ip": 2, "trusted_proxies": "127.0.0.0/8"}], indirect=True
)
async def test_forwarded_for_from_a_trusted_proxy_names_the_client(limited: TestClient[Any, Any]) -> None:
    for i in range(2):
        assert (await post(limited, valid_body(400 + i), {"X-Forwarded-For": "198.51.100.7"}))[0] == 202
    # A spoofed left end does not make a new client: the proxy appended the real one.
    spoofed = {"X-Forwarded-For": "10.9.9.9, 198.51.100.7"}
    assert (await post(limited, valid_body(402), spoofed))[0] == 429
    assert (await post(limited, valid_body(403), {"X-Forwarded-For": "198.51.100.8"}))[0] == 202


@pytest.mark.parametrize("limited", [{"rate_limit_per_ip": 2}], indirect=True)
async def test_forwarded_for_from_an_untrusted_peer_is_ignored(limited: TestClient[Any, Any]) -> None:
    statuses = [
        (await post(limited, valid_body(500 + i), {"X-Forwarded-For": f"198.51.100.{i + 1}"}))[0]
        for i in range(3)
    ]
    assert statuses == [202, 202, 429]


def test_client_address_walks_forwarded_for_from_the_right() -> None:
    trusted = parse_networks("10.0.0.0/8, 192.0.2.1")
    assert client_address("203.0.113.5", "1.1.1.1", trusted) == "203.0.113.5"
    assert client_address("10.0.0.2", "1.1.1.1, 198.51.100.3", trusted) == "198.51.100.3"
    assert client_address("10.0.0.2", "198.51.100.3, 192.0.2.1", trusted) == "198.51.100.3"
    assert client_address("10.0.0.2", "10.1.1.1, 10.2.2.2", trusted) == "10.1.1.1"
    assert client_address("10.0.0.2", None, trusted) == "10.0.0.2"
    assert client_address("10.0.0.2", "1.1.1.1", ()) == "10.0.0.2"
    assert counted_subject("2001:db8:1:2:aaaa::1") == counted_subject("2001:db8:1:2:bbbb::9")
    assert counted_subject("2001:db8:1:3::1") != counted_subject("2001:db8:1:2::1")
    assert counted_subject("::ffff:203.0.113.5") == "203.0.113.5"
    with pytest.raises(ConfigurationError):
        parse_networks("10.0.0.0/8, proxy.internal")


async def test_concurrent_checks_share_one_round_trip(redis: aioredis.Redis, settings: Settings) -> None:
    limiter = RateLimiter(
        redis, settings.with_changes(rate_limit_per_ip=20, rate_limit_per_phone=100),
        Hasher.from_secret(settings.identity_secret),
    )
    client = limiter.client_subject("198.51.100.1", None)
    results = await asyncio.gather(
        *(limiter.check(client, limiter.phone_subject(f"+8491234{i % 5:04d}")) for i in range(50)),
        return_exceptions=True,
    )
    assert limiter.round_trips == 1
    refused = [r for r in results if isinstance(r, RateLimited)]
    assert len(refused) == 30 and {r.scope for r in refused} == {"client"}
    assert all(r is None for r in results[:20])
    counters = await rate_keys(redis, settings)
    assert len(counters) == 6  # one client, five phones: a batch adds up locally


async def test_a_subject_known_over_its_limit_is_refused_without_a_round_trip(
    redis: aioredis.Redis, settings: Settings
) -> None:
    limiter = RateLimiter(redis, settings.with_changes(rate_limit_per_ip=3),
                          Hasher.from_secret(settings.identity_secret))
    client = limiter.client_subject("198.51.100.1", None)
    for _ in range(3):
        await limiter.check(client)
    trips = limiter.round_trips
    for _ in range(100):
        with pytest.raises(RateLimited) as refused:
            await limiter.check(client)
        assert 1 <= refused.value.retry_after_s <= c.RATE_WINDOW_CLIENT_S + c.RATE_RETRY_JITTER_S
    assert limiter.round_trips == trips
    await limiter.check(limiter.client_subject("198.51.100.2", None))  # others still pass


@pytest.mark.parametrize("limited", [{"rate_limit_per_ip": 2}], indirect=True)
async def test_a_flooding_client_gets_429_before_its_body_is_even_read(
    limited: TestClient[Any, Any]
) -> None:
    from gateway.app import RUNTIME

    limiter = limited.server.app[RUNTIME].limiter
    assert (await post(limited, valid_body(800)))[0] == 202
    assert (await post(limited, valid_body(801)))[0] == 202
    trips = limiter.round_trips
    for _ in range(20):
        assert (await post(limited, b"{broken"))[0] == 429  # not 400: never parsed
    assert limiter.round_trips == trips


@pytest.mark.parametrize("limited", [{"rate_limit_per_ip": 2}], indirect=True)
async def test_retry_after_is_the_rest_of_the_window_plus_jitter(
    limited: TestClient[Any, Any], redis: aioredis.Redis, settings: Settings
) -> None:
    assert (await post(limited, valid_body(600)))[0] == 202
    [key] = await rate_keys(redis, settings)
    await redis.pexpire(key, 10_000)
    assert (await post(limited, valid_body(601)))[0] == 202
    status, _, headers = await post(limited, valid_body(602))
    assert status == 429
    assert 10 <= int(headers["Retry-After"]) <= 10 + c.RATE_RETRY_JITTER_S


@pytest.mark.parametrize(
    "limited", [{"rate_limit_per_ip": 50, "rate_limit_per_phone": 50}], indirect=True
)
async def test_counter_key_names_carry_no_address_or_phone(
    limited: TestClient[Any, Any], redis: aioredis.Redis, settings: Settings
) -> None:
    body = valid_body(700)
    body["phone"] = "0912345678"
    assert (await post(limited, body))[0] == 202
    keys = await rate_keys(redis, settings)
    assert len(keys) == 2
    for key in keys:
        pattern = re.escape(settings.key_prefix + "rate:{limits}:") + r"(client|phone):[0-9a-f]{16}"
        assert re.fullmatch(pattern, key)
        assert "127.0.0.1" not in key and "912345678" not in key


async def test_unreachable_redis_is_a_dependency_error_not_a_crash(settings: Settings) -> None:
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    limiter = RateLimiter(
        dead, settings.with_changes(rate_limit_per_ip=5), Hasher.from_secret(settings.identity_secret)
    )
    try:
        with pytest.raises(DependencyUnavailable):
            await limiter.check(limiter.client_subject("198.51.100.1", None))
    finally:
        await dead.aclose()
