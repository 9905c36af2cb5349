"""The live operations page: behind an operator token, and in a real headless Chromium
it loads, draws its charts, and its numbers follow registrations as they arrive and
drain."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway import auth
from gateway.settings import Settings
from gateway.writer import run_writer
from tests.conftest import make_client
from tests.helpers import valid_body

TOKEN = "operator-test-token-" + "x" * 24
HEADERS = {"Content-Type": "application/json", "X-Channel": "web"}
ROOT = Path(__file__).resolve().parent.parent


def _browser_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ops_browser", ROOT / "ops" / "browser.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


browser = _browser_module()


@pytest.fixture(scope="session")
def chromium() -> str:
    return str(browser.ensure_chromium())


@pytest.fixture
def ops_settings(settings: Settings) -> Settings:
    return settings.with_changes(operator_token_sha256=hashlib.sha256(TOKEN.encode()).hexdigest())


@pytest.fixture
async def ops_client(ops_settings: Settings) -> Any:
    client = await make_client(ops_settings)
    yield client
    await _close(client)


async def _close(client: TestClient[Any, Any]) -> None:
    # Let the reference cache's start-up refresh end first: a cancellation that lands
    # inside one of its Redis calls can be swallowed (redis-py socket timeouts on
    # Python 3.11), and the app's clean-up then waits for that task forever.
    await asyncio.sleep(0.3)
    await client.close()


@pytest.fixture
async def closed_client(settings: Settings) -> Any:
    client = await make_client(settings)  # no operator digest configured
    yield client
    await _close(client)


# -- the token ----------------------------------------------------------------------------
async def test_ops_page_and_its_data_require_an_operator_token(
    ops_client: TestClient[Any, Any],
) -> None:
    page = await ops_client.get("/ops", allow_redirects=False)
    assert (page.status, page.headers["Location"]) == (303, "/ops/login")
    for path in ("/ops/api/state", "/ops/events", "/ops/static/ops.js"):
        assert (await ops_client.get(path)).status == 401, path
        wrong = await ops_client.get(path, headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status == 401, path
    allowed = await ops_client.get("/ops/api/state", headers={"Authorization": f"Bearer {TOKEN}"})
    assert allowed.status == 200
    assert set(await allowed.json()) >= {"healthy", "series", "current", "dead_letters"}


async def test_login_sets_a_session_cookie_that_tampering_breaks(
    ops_client: TestClient[Any, Any],
) -> None:
    refused = await ops_client.post("/ops/login", data={"token": "guess"}, allow_redirects=False)
    assert refused.status == 401
    assert "gw_ops" not in refused.cookies
    signed_in = await ops_client.post("/ops/login", data={"token": TOKEN}, allow_redirects=False)
    assert (signed_in.status, signed_in.headers["Location"]) == (303, "/ops")
    cookie = signed_in.cookies["gw_ops"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/ops"
    page = await ops_client.get("/ops", allow_redirects=False)
    assert page.status == 200 and "Content-Security-Policy" in page.headers
    expires, digest, signature = cookie.value.split(".")
    forged = f"{int(expires) + 86400}.{digest}.{signature}"
    ops_client.session.cookie_jar.clear()
    denied = await ops_client.get("/ops/api/state", headers={"Cookie": f"gw_ops={forged}"})
    assert denied.status == 401


async def test_operator_access_is_off_when_no_digest_is_configured(
    closed_client: TestClient[Any, Any],
) -> None:
    response = await closed_client.get("/ops/api/state", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status == 403
    assert (await response.json())["error"] == "operator_access_not_configured"


async def test_public_endpoints_need_no_token(ops_client: TestClient[Any, Any]) -> None:
    response = await ops_client.post(
        "/v1/registrations", data=orjson.dumps(valid_body(3)), headers=HEADERS
    )
    assert response.status == 202
    assert (await ops_client.get("/healthz")).status == 200
    assert (await ops_client.get("/metrics")).status == 200


def test_removing_a_digest_ends_the_sessions_it_issued(ops_settings: Settings) -> None:
    old = auth.OperatorAuth(ops_settings)
    digest = old.match(TOKEN)
    assert digest is not None and old.match(TOKEN + "x") is None
    session = old.session(digest)
    assert old.session_ok(session)
    other = hashlib.sha256(b"the new token").hexdigest()
    rotated = auth.OperatorAuth(ops_settings.with_changes(operator_token_sha256=other))
    assert not rotated.session_ok(session)
    assert not old.session_ok(session, now=10**11)  # expired


# -- the page in a real browser ---------------------------------------------------------------
CANVAS_INK = """(() => {
  const c = document.getElementById('%s');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let ink = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) ink++;
  return ink;
})()"""


async def test_page_draws_charts_and_follows_registrations_as_they_arrive_and_drain(
    chromium: str, ops_settings: Settings, ops_client: TestClient[Any, Any], tmp_path: Path
) -> None:
    base = str(ops_client.make_url("")).rstrip("/")
    async with browser.Browser(chromium) as page:
        await page.sign_in(base, TOKEN)
        await page.wait_for("window.opsPage && window.opsPage.ticks >= 2")
        assert await page.evaluate("document.getElementById('backlog').textContent") == "0"
        for chart in ("chart-backlog", "chart-rates", "chart-age"):
            assert await page.evaluate(CANVAS_INK % chart) > 2000, chart  # axes, labels, lines
        assert await page.evaluate("window.opsPage.drawn.backlog") >= 2  # points on the line

        for seed in range(40):
            response = await ops_client.post(
                "/v1/registrations", data=orjson.dumps(valid_body(5000 + seed)), headers=HEADERS
            )
            assert response.status == 202
        await page.wait_for("document.getElementById('backlog').textContent === '40'", timeout=20)
        assert await page.evaluate("document.getElementById('writers').textContent") == "0"
        assert "no writer alive" in await page.evaluate(
            "document.getElementById('problems').textContent"
        )

        stop = asyncio.Event()
        writer = asyncio.create_task(
            run_writer(ops_settings.with_changes(writer_metrics_port=0), stop)
        )
        try:
            await page.wait_for(
                "document.getElementById('backlog').textContent === '0'", timeout=30
            )
            await page.wait_for(
                "document.getElementById('writers').textContent === '1'", timeout=20
            )
            await page.wait_for("window.opsPage.points.some(p => p.drain_rate > 0)", timeout=20)
            peak = await page.evaluate("Math.max(...window.opsPage.points.map(p => p.backlog))")
            assert peak == 40
            assert await page.evaluate(CANVAS_INK % "chart-rates") > 2000
            shot = tmp_path / "ops-page.png"
            assert await page.screenshot(shot) > 20_000
        finally:
            stop.set()
            stats = await asyncio.wait_for(writer, timeout=30)
        assert stats.committed == 40
        assert not [line for line in page.console if line.startswith("exception")]
    target = os.environ.get("OPS_PAGE_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)
