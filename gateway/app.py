"""``create_app(settings)``: resources opened and closed in ``cleanup_ctx``, errors turned
into JSON in one middleware, typed application keys in one place."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import orjson
import redis.asyncio as aioredis
from aiohttp import web

from gateway import metrics
from gateway.append import Appender
from gateway.backlog import BacklogMonitor
from gateway.connections import check_safety, connect
from gateway.exceptions import DependencyUnavailable, Overloaded
from gateway.identity import Hasher
from gateway.ratelimit import RateLimited, RateLimiter
from gateway.reference import ReferenceCache
from gateway.settings import Settings
from gateway.store import Store, connect_pool
from gateway.validation import ValidationFailed, preferred_language

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Runtime:
    """Everything a request handler needs, built once per process."""

    settings: Settings
    hasher: Hasher
    redis: aioredis.Redis | None = None
    store: Store | None = None
    appender: Appender | None = None
    backlog: BacklogMonitor | None = None
    reference: ReferenceCache | None = None
    limiter: RateLimiter | None = None
    draining: bool = False
    in_flight: int = 0  # requests admitted before draining began, still running
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


RUNTIME = web.AppKey("runtime", Runtime)


def json_response(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def error_response(
    status: int, code: str, message: str, *, retry_after: int | None = None, **extra: object
) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return json_response(status, {"error": code, "message": message, **extra}, headers)


def _route_of(request: web.Request) -> str:
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    route = _route_of(request)
    try:
        response = await handler(request)
    except ValidationFailed as exc:
        response = json_response(400, exc.render(preferred_language(request.headers.get("Accept-Language"))))
    except RateLimited as exc:
        metrics.SHED.labels(f"rate_{exc.scope}").inc()
        response = error_response(
            429, "rate_limited", "Too many requests; please retry after the given time.",
            retry_after=exc.retry_after_s,
        )
    except Overloaded as exc:
        metrics.SHED.labels("backlog").inc()
        response = error_response(
            503, "overloaded", "Registration is very busy; please retry after the given time.",
            retry_after=exc.retry_after_s,
        )
    except DependencyUnavailable as exc:
        metrics.SHED.labels(exc.dependency).inc()
        response = error_response(
            503, "temporarily_unavailable",
            # Not "nothing was recorded": after a timeout the append may have happened.
            "Registration is temporarily unavailable. Please retry after the given time; "
            "a retry never registers you twice.",
            retry_after=random.randint(2, 6),
        )
    except web.HTTPRequestEntityTooLarge:
        response = error_response(413, "body_too_large", "The request body is too large.")
    except web.HTTPException as exc:
        if exc.status >= 400:
            response = error_response(exc.status, _http_code(exc.status), exc.reason)
        else:
            raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:  # noqa: BLE001 - a bug: log it, never leak details
        log.exception("unhandled error", extra={"route": route})
        response = error_response(500, "internal_error", "Internal error.")
    metrics.HTTP_REQUESTS.labels(route, str(response.status)).inc()
    metrics.HTTP_LATENCY.labels(route).observe(time.perf_counter() - started)
    return response


def _http_code(status: int) -> str:
    return {
        400: "bad_request", 404: "not_found", 405: "method_not_allowed",
        408: "request_timeout", 413: "body_too_large", 415: "unsupported_media_type",
        429: "rate_limited",
    }.get(status, "http_error")


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    rt = app[RUNTIME]
    rt.redis = await connect(rt.settings)
    safety = await check_safety(rt.redis, rt.settings)
    rt.appender = Appender(rt.redis, rt.settings, rt.hasher)
    if rt.settings.durability == "strict" and safety.supports_waitaof:
        rt.appender.use_waitaof(True)
    rt.backlog = BacklogMonitor(rt.redis, rt.settings)
    rt.limiter = RateLimiter(rt.redis, rt.settings, rt.hasher)
    await rt.backlog.sample()
    rt.tasks.append(asyncio.create_task(rt.backlog.run()))
    yield
    await rt.redis.aclose()


async def _postgres_ctx(app: web.Application) -> AsyncIterator[None]:
    """A small pool for reference data and status look-ups. The gateway starts even when
    PostgreSQL is down: intake must not depend on it."""
    rt = app[RUNTIME]
    try:
        pool = await connect_pool(rt.settings.with_changes(pg_pool_max=2), attempts=1)
        rt.store = Store(pool, rt.settings.pg_acquire_timeout_s)
    except DependencyUnavailable:
        log.warning("postgres unavailable at start; using the reference snapshot in redis")
        rt.store = None
    assert rt.redis is not None
    rt.reference = ReferenceCache(rt.settings, rt.redis, rt.store)
    await rt.reference.refresh()
    rt.tasks.append(asyncio.create_task(rt.reference.run()))
    yield
    await _cancel_all(rt.tasks)
    if rt.store is not None:
        await rt.store.close()


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel background tasks and wait for them. A cancellation can be swallowed by a
    driver call that was timing out at that moment, so cancel again until they end
    (one ``gather`` after one ``cancel`` can wait forever)."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)


async def _on_shutdown(app: web.Application) -> None:
    app[RUNTIME].draining = True


@web.middleware
async def in_flight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rt = request.app[RUNTIME]
    if rt.draining:  # answered (503), and the client told to reconnect: to another process
        response = await handler(request)
        response.force_close()
        return response
    rt.in_flight += 1
    try:
        return await handler(request)
    finally:
        rt.in_flight -= 1


async def drain(app: web.Application, grace_s: float) -> None:
    """Stop admitting requests (503 + Retry-After, /readyz 503) and wait up to ``grace_s``
    for the admitted ones to finish, bodies still uploading included. aiohttp's own
    shutdown stops reading from every connection first, so it runs only after this."""
    rt = app[RUNTIME]
    rt.draining = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while rt.in_flight and loop.time() < deadline:
        await asyncio.sleep(0.05)
    log.info("drained", extra={"unfinished": rt.in_flight})


def create_app(settings: Settings) -> web.Application:
    from gateway import divisions, views  # views import app helpers; keep the import one way

    divisions.preload()  # the first registration must not pay for loading the tables
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[in_flight_middleware, errors_middleware],
    )
    app[RUNTIME] = Runtime(settings=settings, hasher=Hasher.from_secret(settings.identity_secret))
    app.cleanup_ctx.append(_redis_ctx)
    app.cleanup_ctx.append(_postgres_ctx)
    app.on_shutdown.append(_on_shutdown)
    views.add_routes(app)
    return app
