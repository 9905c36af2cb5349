"""The operators' side of the gateway: ``/metrics`` and the live operations page.

Every gateway process samples the queue once a second (one pipelined Redis round trip)
and offers the sample as the point of that second in the shared ``ops:history`` stream;
the first process to offer a second keeps it. The page (``/ops``, behind an operator
token, see :mod:`gateway.auth`) draws the last minutes of that history and then follows
it live over server-sent events, so whichever process a browser reaches, it sees the
same series. Everything is served from the package: the page works with no network
beyond the gateway itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway import auth, metrics
from gateway import constants as c
from gateway.app import RUNTIME, json_response
from gateway.dlq import CountCache, DeadLetters
from gateway.exceptions import DependencyUnavailable
from gateway.queue_stats import Point, QueueSnapshot, QueueStats, series
from gateway.status import build_report

log = logging.getLogger(__name__)

WINDOW_S = 600  # the charts show the last ten minutes
STATIC = {
    "ops.js": "application/javascript",
    "ops.css": "text/css",
    "charts.js": "application/javascript",
}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass
class OpsState:
    stats: QueueStats | None = None
    dead: CountCache | None = None
    latest: QueueSnapshot | None = None
    task: asyncio.Task[None] | None = None


OPS = web.AppKey("ops", OpsState)


async def _sample_forever(state: OpsState) -> None:
    assert state.stats is not None
    me = asyncio.current_task()
    while True:
        try:
            state.latest = await state.stats.snapshot()
            await state.stats.record(state.latest)
        except DependencyUnavailable:
            state.latest = None
        except Exception:  # the page must not take intake down with it
            log.exception("queue sampling failed")
        if me is not None and me.cancelling():
            # redis-py with a socket timeout can swallow a cancellation on Python 3.11
            # (the command then returns normally): honour it here.
            raise asyncio.CancelledError
        await asyncio.sleep(c.OPS_SAMPLE_INTERVAL_S)


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel until the task is really done (see the note in _sample_forever)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)


async def _ops_ctx(app: web.Application) -> AsyncIterator[None]:
    rt, state = app[RUNTIME], app[OPS]
    assert rt.redis is not None
    state.stats = QueueStats(rt.redis, rt.settings)
    letters = DeadLetters(rt.store) if rt.store is not None else None
    state.dead = CountCache(letters, c.DEAD_LETTER_COUNT_CACHE_S)
    state.task = asyncio.create_task(_sample_forever(state))
    yield
    await _stop(state.task)


# -- /metrics ---------------------------------------------------------------------------
async def metrics_view(request: web.Request) -> web.Response:
    rt, state = request.app[RUNTIME], request.app[OPS]
    assert state.dead is not None
    snapshot, dead = await metrics.queue_facts(rt.redis, rt.settings, state.dead)
    return web.Response(
        body=metrics.exposition(snapshot, dead), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


# -- the page ---------------------------------------------------------------------------
def _asset(name: str) -> bytes:
    return resources.files("gateway").joinpath("static", name).read_bytes()


async def page(request: web.Request) -> web.StreamResponse:
    if auth.denied(request, request.app[RUNTIME].settings) is not None:
        return _see_other("/ops/login")
    return web.Response(body=_asset("ops.html"), content_type="text/html", headers=PAGE_HEADERS)


async def static(request: web.Request) -> web.Response:
    if (denied := auth.denied(request, request.app[RUNTIME].settings)) is not None:
        return denied
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    return web.Response(body=_asset(name), content_type=STATIC[name], headers=PAGE_HEADERS)


async def login_form(request: web.Request) -> web.Response:
    return _login_page(200, "")


def _login_page(status: int, message: str) -> web.Response:
    text = _asset("login.html").decode().replace("{{message}}", message)
    return web.Response(status=status, text=text, content_type="text/html", headers=PAGE_HEADERS)


async def login(request: web.Request) -> web.StreamResponse:
    settings = request.app[RUNTIME].settings
    checker = auth.for_settings(settings)
    if not checker.configured:
        return _login_page(403, "Operator access is off: set GATEWAY_OPERATOR_TOKEN_SHA256.")
    form = await request.post()
    token = form.get("token")
    digest = checker.match(token.strip()) if isinstance(token, str) else None
    if digest is None:
        log.warning("operator login refused")
        return _login_page(401, "That token is not accepted.")
    response = _see_other("/ops")
    response.set_cookie(
        c.OPS_SESSION_COOKIE,
        checker.session(digest),
        max_age=c.OPS_SESSION_TTL_S,
        path="/ops",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    log.info("operator logged in")
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    response = _see_other("/ops/login")
    response.del_cookie(c.OPS_SESSION_COOKIE, path="/ops")
    return response


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


# -- data -------------------------------------------------------------------------------
async def state_payload(app: web.Application, seconds: float) -> dict[str, Any]:
    rt, state = app[RUNTIME], app[OPS]
    assert state.stats is not None and state.dead is not None
    points: list[Point] = []
    try:
        points = await state.stats.history(seconds)
    except DependencyUnavailable:
        pass
    dead = await state.dead.get()
    # A process that started while PostgreSQL was down has no pool, and says so.
    postgres_up = state.dead.letters is not None and state.dead.ok
    report = build_report(
        state.latest, points[-12:], dead, postgres_up, rt.settings, state.dead.error
    )
    return {
        "healthy": report.healthy,
        "problems": report.problems,
        "notes": report.notes,
        "current": report.as_dict(),
        "series": series(points),
        "dead_letters": {
            "held": dead.held if dead else None,
            "top": dead.held_by_reason[:5] if dead else [],
        },
        "window_s": WINDOW_S,
    }


async def state_view(request: web.Request) -> web.Response:
    if (denied := auth.denied(request, request.app[RUNTIME].settings)) is not None:
        return denied
    return json_response(200, await state_payload(request.app, WINDOW_S))


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the whole window first, then one tick a second with the
    newest point (EventSource reconnects by itself when a gateway restarts)."""
    rt = request.app[RUNTIME]
    if (denied := auth.denied(request, rt.settings)) is not None:
        return denied
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    try:
        await _send(response, "state", await state_payload(request.app, WINDOW_S))
        while not rt.draining:
            await asyncio.sleep(c.OPS_SAMPLE_INTERVAL_S)
            payload = await state_payload(request.app, 12)
            payload["series"] = payload["series"][-3:]
            await _send(response, "tick", payload)
    except ConnectionResetError:  # the browser went away
        pass
    return response


async def _send(response: web.StreamResponse, event: str, data: dict[str, Any]) -> None:
    await response.write(b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n")


def add_routes(app: web.Application) -> None:
    app[OPS] = OpsState()
    app.cleanup_ctx.append(_ops_ctx)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/ops", page)
    app.router.add_get("/ops/login", login_form)
    app.router.add_post("/ops/login", login)
    app.router.add_post("/ops/logout", logout)
    app.router.add_get("/ops/api/state", state_view)
    app.router.add_get("/ops/events", events)
    app.router.add_get("/ops/static/{name}", static)
