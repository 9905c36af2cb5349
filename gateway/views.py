"""HTTP handlers. Thin: parse, call validation and the appender, shape the answer."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

import orjson
from aiohttp import web

from gateway import metrics, openapi
from gateway.append import APPENDED, REPLAYED
from gateway.app import RUNTIME, Runtime, error_response, json_response
from gateway.backlog import entry_exists
from gateway.exceptions import DependencyUnavailable, Overloaded
from gateway.identity import parse_registration_id
from gateway.validation import Registration, ValidationFailed, validate

MAX_IDEMPOTENCY_KEY = 128


def _ready_runtime(request: web.Request) -> Runtime:
    rt = request.app[RUNTIME]
    if rt.draining:
        raise DependencyUnavailable("gateway", "shutting down")
    return rt


async def register(request: web.Request) -> web.Response:
    rt = _ready_runtime(request)
    assert rt.appender is not None and rt.backlog is not None and rt.reference is not None
    if rt.backlog.over_high_water():
        raise Overloaded(rt.backlog.retry_after())
    if not rt.reference.loaded:
        raise DependencyUnavailable("postgres", "reference data not loaded")
    limiter = rt.limiter if rt.limiter is not None and rt.limiter.enabled else None
    client = None
    if limiter is not None:
        client = limiter.client_subject(request.remote, request.headers.get("X-Forwarded-For"))
        limiter.refuse_known(client)  # known to be over its limit: not even the body is read
    try:
        parsed = await _read_registration(request, rt)
    except (ValidationFailed, web.HTTPException):
        # Refused input counts against the client address too: a flood of bad bodies
        # is still a flood. Over the limit, the answer becomes 429.
        if limiter is not None:
            await limiter.check(client)
        raise
    if isinstance(parsed, web.Response):
        if limiter is not None:
            await limiter.check(client)
        return parsed
    registration, idempotency_key = parsed
    if limiter is not None:
        await limiter.check(client, limiter.phone_subject(registration.phone))
    received_at = datetime.now(UTC).isoformat(timespec="milliseconds")
    result = await rt.appender.append(
        registration, idempotency_key=idempotency_key, received_at=received_at
    )
    if result.outcome == APPENDED or result.outcome == REPLAYED:
        outcome = "queued" if result.outcome == APPENDED else "replayed"
        metrics.REGISTRATIONS.labels(outcome).inc()
        return json_response(
            202 if result.outcome == APPENDED else 200,
            {"registration_id": result.registration_id, "status": "queued",
             "received_at": result.received_at},
        )
    metrics.REGISTRATIONS.labels("conflict").inc()
    body_409: dict[str, object] = {
        "error": "already_registered",
        "message": "This identity document is already registered with different details.",
    }
    if result.registration_id:  # the caller proved to be that person (same phone)
        body_409["registration_id"] = result.registration_id
        body_409["received_at"] = result.received_at
    return json_response(409, body_409)


async def _read_registration(
    request: web.Request, rt: Runtime
) -> tuple[Registration, str | None] | web.Response:
    """The validated registration and its Idempotency-Key, or the response refusing it.
    Raises ValidationFailed or an HTTP error (413) for the middleware to render."""
    assert rt.reference is not None
    if request.content_type != "application/json":
        return error_response(
            415, "unsupported_media_type", "Send the registration as application/json."
        )
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key is not None and not _valid_idempotency_key(idempotency_key):
        return error_response(
            400, "invalid_fields", "Idempotency-Key must be 1-128 printable ASCII characters.",
            fields={"Idempotency-Key": {"code": "invalid_idempotency_key",
                                        "message": "1-128 printable ASCII characters"}},
        )
    declared = request.content_length
    if declared is not None and declared > rt.settings.max_body_bytes:
        # Refuse at once: do not wait for a body we will not read.
        return error_response(413, "body_too_large", "The request body is too large.")
    try:
        # aiohttp bounds the wait for the request head (keep-alive timer) but not for the
        # body: without this a client sending a byte a second holds its slot for hours.
        if request.content.is_eof():  # the whole body came with the headers: no wait
            raw = await request.read()
        else:
            async with asyncio.timeout(rt.settings.body_timeout_s):
                raw = await request.read()
    except TimeoutError:
        response = error_response(
            408, "request_timeout", "The request body did not arrive in time."
        )
        response.force_close()
        return response
    except web.RequestPayloadError:
        # Broken chunked framing or compressed data that does not decompress.
        response = error_response(
            400, "malformed_body", "The request body could not be read.",
            fields={"body": {"code": "malformed_body", "message": "unreadable body encoding"}},
        )
        response.force_close()
        return response
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return error_response(
            400, "malformed_json", "The body is not valid UTF-8 JSON.",
            fields={"body": {"code": "malformed_json", "message": "not valid UTF-8 JSON"}},
        )
    registration = validate(
        body,
        channel=request.headers.get("X-Channel"),
        reference=rt.reference,
        today=date.today(),
        min_age_years=rt.settings.min_age_years,
    )
    return registration, idempotency_key


def _valid_idempotency_key(value: str) -> bool:
    return 0 < len(value) <= MAX_IDEMPOTENCY_KEY and all(32 <= ord(ch) < 127 for ch in value)


async def registration_status(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    parsed = parse_registration_id(request.match_info["registration_id"])
    if parsed is None or parsed.shard >= rt.settings.shards:
        return error_response(404, "not_found", "No such registration.")
    assert rt.redis is not None
    rid = request.match_info["registration_id"]
    try:
        # Redis first: an entry leaves the stream only after its row is committed, so
        # "not in the stream" followed by a database look-up never misses it.
        if await entry_exists(rt.redis, rt.settings.stream_key(parsed.shard), parsed.entry_id, parsed.token):
            return json_response(200, {"registration_id": rid, "status": "queued"})
    except Exception as exc:  # noqa: BLE001
        raise DependencyUnavailable("redis", type(exc).__name__) from exc
    if rt.store is None:
        raise DependencyUnavailable("postgres", "not connected")
    found = await rt.store.registration_status(rid)
    if found is None:
        return error_response(404, "not_found", "No such registration.")
    status, doses = found
    return json_response(200, {"registration_id": rid, "status": status, "doses_received": doses})


async def healthz(request: web.Request) -> web.Response:
    return json_response(200, {"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    assert rt.backlog is not None and rt.reference is not None
    state = await rt.backlog.sample()
    checks = {
        "redis": state.redis_up,
        "backlog_under_mark": not rt.backlog.over_high_water(),
        "reference_loaded": rt.reference.loaded,
        "accepting": not rt.draining,
    }
    ready = all(checks.values())
    return json_response(200 if ready else 503, {"ready": ready, "checks": checks,
                                                 "backlog": state.depth})


async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=openapi.document_bytes(), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/registrations", register)
    app.router.add_get("/v1/registrations/{registration_id}", registration_status)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi_document)
    from gateway import opspage  # /metrics (with the queue's state) and the live ops page

    opspage.add_routes(app)
