"""Fuzz a real gateway process from the OpenAPI document it serves (schemathesis).

Every operation gets data that fits the document and data that breaks it. The checks: no
5xx, and every answer conforms to the document (status code declared, content type,
required headers such as Retry-After, body schema). Bounded: a fixed number of examples
per operation and mode, so the whole test stays well under a minute.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.datagen import Generator
from gateway.settings import Settings
from tests.live import start_gateway

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = {"POST /v1/registrations": 150}  # the operation that matters most
DEFAULT_EXAMPLES = 15
CLIENT_LIMIT = 600  # requests a minute: above what the fuzzing sends, then exhausted on purpose
# Operations that take input; the others have nothing to break.
TAKES_INPUT = {"POST /v1/registrations", "GET /v1/registrations/{registration_id}"}


def _fuzz_operation(operation: Any, mode: GenerationMode, base_url: str,
                    session: requests.Session, calls: dict[str, int]) -> None:
    label = operation.label

    @given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis_settings(
        max_examples=EXAMPLES.get(label, DEFAULT_EXAMPLES),
        deadline=None,
        database=None,
        derandomize=True,  # the same cases every run: a failure reproduces
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def call(case: Any) -> None:
        response = case.call_and_validate(base_url=base_url, session=session, checks=CHECKS,
                                          timeout=10)
        calls[label] = calls.get(label, 0) + 1
        key = f"status {response.status_code}"
        calls[key] = calls.get(key, 0) + 1

    call()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8"), max_size=60),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELD_PATHS = (
    "full_name", "date_of_birth", "gender", "phone", "id_document", "id_document.type",
    "id_document.number", "health_insurance_number", "email", "address", "address.province_code",
    "address.ward_code", "address.street", "priority_group", "occupation", "site_id",
    "preferred_date", "preferred_session", "screening", "screening.pregnant", "consent", "channel",
)


def _any_value_in_any_field(base_url: str, session: requests.Session, calls: dict[str, int]) -> None:
    """Property: a valid body with one field replaced by any JSON value at all is either
    accepted or refused with 400 naming that field (or a parent): never anything else."""
    person = Generator(43).person()

    @given(path=st.sampled_from(FIELD_PATHS), value=json_values)
    @hypothesis_settings(max_examples=150, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(HealthCheck))
    def check(path: str, value: Any) -> None:
        body = copy.deepcopy(person)
        *parents, leaf = path.split(".")
        target = body
        for name in parents:
            target = target[name] if isinstance(target.get(name), dict) else target.setdefault(name, {})
        target[leaf] = value
        response = session.post(base_url + "/v1/registrations", json=body,
                                headers={"X-Channel": "web"}, timeout=10)
        calls[f"property {response.status_code}"] = calls.get(f"property {response.status_code}", 0) + 1
        assert response.status_code in (200, 202, 400, 409), (path, value, response.text)
        if response.status_code == 400:
            named = response.json()["fields"]
            assert any(p == path or path.startswith(p + ".") or p.startswith(path + ".")
                       for p in named), (path, value, named)

    check()


def _fuzz(base_url: str) -> dict[str, int]:
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
    session = requests.Session()
    calls: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        _fuzz_operation(operation, GenerationMode.POSITIVE, base_url, session, calls)
        if operation.label in TAKES_INPUT:
            _fuzz_operation(operation, GenerationMode.NEGATIVE, base_url, session, calls)
    # Realistic bodies too, so 202, 200 (replay) and 409 (conflict) are checked against
    # the document: generated data almost never names a real site or a consistent CCCD.
    register = schema["/v1/registrations"]["POST"]
    people = Generator(41)
    statuses = []
    for _ in range(5):
        person = people.person()
        for body in (person, person, people.conflicting(person)):
            case = register.Case(body=body, headers={"X-Channel": "web"},
                                 media_type="application/json")
            statuses.append(case.call_and_validate(base_url=base_url, session=session,
                                                   checks=CHECKS, timeout=10).status_code)
    calls["realistic"] = len(statuses)
    _any_value_in_any_field(base_url, session, calls)
    # Finally past the client's limit: the 429 must match the document too (Retry-After).
    for _ in range(CLIENT_LIMIT + 1):
        if session.post(base_url + "/v1/registrations", data=b"{", timeout=10,
                        headers={"Content-Type": "application/json"}).status_code == 429:
            break
    case = register.Case(body=people.person(), headers={"X-Channel": "web"},
                         media_type="application/json")
    response = case.call_and_validate(base_url=base_url, session=session, checks=CHECKS, timeout=10)
    assert response.status_code == 429
    calls["status 429"] = 1
    assert {202, 200, 409} <= set(statuses), statuses
    session.close()
    return calls


async def test_fuzzing_from_the_served_document_finds_no_5xx_and_no_undocumented_answer(
    settings: Settings, tmp_path: Path
) -> None:
    # Limits on, so that the 429 is checked against the document too.
    gateway = await start_gateway(settings, tmp_path / "gateway.log",
                                  GATEWAY_RATE_LIMIT_PER_IP=str(CLIENT_LIMIT))
    try:
        calls = await asyncio.to_thread(_fuzz, gateway.url)
    finally:
        assert gateway.alive()
        gateway.stop()
    print("fuzz calls:", calls)
    assert set(calls) >= {"POST /v1/registrations", "GET /v1/registrations/{registration_id}",
                          "GET /healthz", "GET /readyz", "realistic"}, calls
    log = (tmp_path / "gateway.log").read_text()
    assert "Traceback" not in log, log[-3000:]


async def test_public_endpoints_need_no_token_while_operator_endpoints_do(settings: Settings) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from gateway.app import create_app
    from gateway.auth import new_token, token_digest

    token = new_token()
    app = create_app(settings.with_changes(operator_token_sha256=token_digest(token)))
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        body = Generator(42).person()
        async with client.post("/v1/registrations", json=body, headers={"X-Channel": "app"}) as resp:
            assert resp.status == 202
            registration_id = (await resp.json())["registration_id"]
        for path in (f"/v1/registrations/{registration_id}", "/openapi.json", "/healthz", "/readyz"):
            async with client.get(path) as resp:
                assert resp.status == 200, path
        async with client.get("/ops/api/state") as resp:
            assert resp.status == 401
        async with client.get("/ops/api/state", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
        async with client.get("/openapi.json") as resp:
            document = await resp.json()
        operations = [op for path in document["paths"].values() for op in path.values()]
        assert all(op["security"] == [] for op in operations)  # documented as public
    finally:
        await client.close()
