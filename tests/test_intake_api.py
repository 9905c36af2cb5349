"""The HTTP contract against real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import unicodedata
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway.settings import Settings
from tests.helpers import clone, valid_body

HEADERS = {"X-Channel": "web"}


async def post(client: TestClient[Any, Any], body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    h = {"Content-Type": "application/json", **HEADERS, **(headers or {})}
    async with client.post("/v1/registrations", data=data, headers=h) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_new_registration_is_queued_with_202(client: TestClient[Any, Any], redis: Any, settings: Settings) -> None:
    status, body = await post(client, valid_body())
    assert status == 202
    assert body["status"] == "queued"
    assert body["registration_id"].startswith("0-")
    assert await redis.xlen(settings.stream_key(0)) == 1


async def test_twenty_identical_concurrent_submissions_append_once(
    client: TestClient[Any, Any], redis: Any, settings: Settings
) -> None:
    body = valid_body(7)
    results = await asyncio.gather(*(post(client, body) for _ in range(20)))
    statuses = sorted(s for s, _ in results)
    assert statuses.count(202) == 1
    assert statuses.count(200) == 19
    assert len({b["registration_id"] for _, b in results}) == 1
    assert await redis.xlen(settings.stream_key(0)) == 1


async def test_nfd_name_and_other_phone_spelling_are_the_same_person(
    client: TestClient[Any, Any], redis: Any, settings: Settings
) -> None:
    body = valid_body(3)
    body["full_name"] = unicodedata.normalize("NFC", "Nguyễn Thị Ánh Tuyết")
    body["phone"] = "0912345678"
    status, first = await post(client, body)
    assert status == 202
    again = clone(body)
    again["full_name"] = unicodedata.normalize("NFD", "  Nguyễn   Thị Ánh Tuyết ")
    again["phone"] = "+84 912 345 678"
    status, second = await post(client, again, {"X-Channel": "app"})
    assert status == 200
    assert second["registration_id"] == first["registration_id"]
    assert await redis.xlen(settings.stream_key(0)) == 1


async def test_same_document_different_content_is_409_without_disclosure(client: TestClient[Any, Any]) -> None:
    body = valid_body(4)
    body["phone"] = "0912345678"
    status, first = await post(client, body)
    assert status == 202
    stranger = clone(body)
    stranger["phone"] = "0987654321"
    stranger["occupation"] = "Kỹ sư"
    status, answer = await post(client, stranger)
    assert status == 409
    assert "registration_id" not in answer
    assert first["registration_id"] not in orjson.dumps(answer).decode()
    same_person = clone(body)
    same_person["occupation"] = "Kỹ sư"
    status, answer = await post(client, same_person)
    assert status == 409
    assert answer["registration_id"] == first["registration_id"]


async def test_idempotency_key_replays_even_when_content_changed(client: TestClient[Any, Any]) -> None:
    body = valid_body(5)
    status, first = await post(client, body, {"Idempotency-Key": "k-123"})
    assert status == 202
    edited = clone(body)
    edited["occupation"] = "Giáo viên"
    status, again = await post(client, edited, {"Idempotency-Key": "k-123"})
    assert status == 200
    assert again["registration_id"] == first["registration_id"]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b.__setitem__("full_name", "Nguyễn\u0000Văn A"), "full_name"),
        (lambda b: b["id_document"].__setitem__("number", 1234567890), "id_document.number"),
        (lambda b: b.__setitem__("phone", 912345678), "phone"),
    ],
)
async def test_bad_field_is_400_naming_the_field(
    client: TestClient[Any, Any], redis: Any, settings: Settings, mutate: Any, field: str
) -> None:
    body = valid_body(6)
    mutate(body)
    status, answer = await post(client, body)
    assert status == 400
    assert field in answer["fields"]
    assert await redis.exists(settings.stream_key(0)) == 0


async def test_all_field_errors_come_back_at_once_in_vietnamese(client: TestClient[Any, Any]) -> None:
    body = valid_body(8)
    body["full_name"] = "A\u0007"
    body["date_of_birth"] = "2999-02-31"
    body["consent"] = False
    status, answer = await post(client, body, {"Accept-Language": "vi-VN,vi;q=0.9"})
    assert status == 400
    assert {"full_name", "date_of_birth", "consent"} <= set(answer["fields"])
    messages = " ".join(f["message"] for f in answer["fields"].values())
    assert any(ch in messages for ch in "ăâđêôơưạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ")


async def test_malformed_json_wrong_type_and_oversize(client: TestClient[Any, Any], settings: Settings) -> None:
    status, answer = await post(client, b"{not json")
    assert status == 400 and "body" in answer["fields"]
    async with client.post("/v1/registrations", data=b"{}", headers={"Content-Type": "text/plain"}) as resp:
        assert resp.status == 415
    big = b'{"full_name": "' + b"a" * (settings.max_body_bytes + 10) + b'"}'
    async with client.post("/v1/registrations", data=big, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"] == "body_too_large"


async def test_status_is_queued_then_stored(client: TestClient[Any, Any], settings: Settings) -> None:
    from gateway.writer import run_writer

    status, first = await post(client, valid_body(9))
    rid = first["registration_id"]
    async with client.get(f"/v1/registrations/{rid}") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "queued"
    stop = asyncio.Event()
    task = asyncio.create_task(run_writer(settings, stop))
    try:
        for _ in range(100):
            async with client.get(f"/v1/registrations/{rid}") as resp:
                answer = await resp.json()
            if answer["status"] == "stored":
                break
            await asyncio.sleep(0.1)
        assert answer == {"registration_id": rid, "status": "stored", "doses_received": 0}
    finally:
        stop.set()
        await task
    async with client.get("/v1/registrations/0-1-0-aaaaaaaaaa") as resp:
        assert resp.status == 404
    async with client.get("/v1/registrations/nonsense") as resp:
        assert resp.status == 404


async def test_health_and_readiness(client: TestClient[Any, Any]) -> None:
    async with client.get("/healthz") as resp:
        assert resp.status == 200
    async with client.get("/readyz") as resp:
        body = await resp.json()
        assert resp.status == 200 and body["ready"] is True
    async with client.get("/metrics") as resp:
        assert "gateway_http_requests_total" in await resp.text()
