"""The naive design most portals shipped: validate, then INSERT the registration into
PostgreSQL inside the request, one row and one commit per request.

Same HTTP stack (aiohttp + uvloop, SO_REUSEPORT), same validation and identity hashing as
the gateway, same table: the only difference is where the request waits, on the
database instead of on Redis. A connection pool of ``--pool`` per process (asyncpg),
no statement timeout: a request waits for the database as long as the client does.

    DATABASE_URL=postgresql://... python benchmarks/naive_service.py --port 8182
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime

import asyncpg
import orjson
import uvloop
from aiohttp import web

from gateway.identity import Hasher
from gateway.settings import Settings
from gateway.store import COLUMNS, encode_screening
from gateway.validation import ValidationFailed, preferred_language, validate

INSERT = (
    f"INSERT INTO registrations ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(COLUMNS) + 1))}) "
    "ON CONFLICT DO NOTHING RETURNING registration_id"
)
POOL = web.AppKey("pool", asyncpg.Pool)
REFERENCE = web.AppKey("reference", object)
SETTINGS = web.AppKey("settings", Settings)
HASHER = web.AppKey("hasher", Hasher)


class Reference:
    def __init__(self, sites: frozenset[str], groups: frozenset[str]) -> None:
        self.sites, self.groups = sites, groups

    def has_site(self, site_id: str) -> bool:
        return site_id in self.sites

    def has_priority_group(self, code: str) -> bool:
        return code in self.groups


def _json(status: int, body: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def register(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        return _json(415, {"error": "unsupported_media_type"})
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _json(400, {"error": "malformed_json"})
    settings: Settings = request.app[SETTINGS]
    try:
        reg = validate(body, channel=request.headers.get("X-Channel"),
                       reference=request.app[REFERENCE],  # type: ignore[arg-type]
                       today=date.today(), min_age_years=settings.min_age_years)
    except ValidationFailed as exc:
        return _json(400, exc.render(preferred_language(request.headers.get("Accept-Language"))))
    hasher: Hasher = request.app[HASHER]
    received_at = datetime.now(UTC)
    rid = f"0-{time.time_ns() // 1_000_000}-0-{secrets.token_hex(5)}"
    row = (
        rid, hasher.identity_key(reg.id_type, reg.id_number), reg.id_type, reg.id_number,
        reg.full_name, reg.date_of_birth, reg.gender, reg.phone, reg.email,
        reg.health_insurance_number, reg.province_code, reg.ward_code, reg.street,
        reg.priority_group, reg.occupation, reg.site_id, reg.preferred_date,
        reg.preferred_session, encode_screening(reg.screening), reg.channel, received_at,
    )
    try:
        async with request.app[POOL].acquire() as conn:
            stored = await conn.fetchval(INSERT, *row)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return _json(503, {"error": "temporarily_unavailable", "reason": type(exc).__name__})
    if stored is None:
        return _json(409, {"error": "already_registered"})
    return _json(202, {"registration_id": rid, "status": "stored",
                       "received_at": received_at.isoformat(timespec="milliseconds")})


async def healthz(request: web.Request) -> web.Response:
    return _json(200, {"status": "alive"})


def create_app(settings: Settings, pool_size: int) -> web.Application:
    async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(settings.database_url, min_size=pool_size,
                                         max_size=pool_size)
        assert pool is not None
        async with pool.acquire() as conn:
            sites = frozenset(r[0] for r in await conn.fetch("SELECT site_id FROM sites WHERE active"))
            groups = frozenset(r[0] for r in await conn.fetch("SELECT code FROM priority_groups"))
        app[POOL] = pool
        app[REFERENCE] = Reference(sites, groups)
        yield
        await pool.close()

    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[HASHER] = Hasher.from_secret(settings.identity_secret)
    app.cleanup_ctx.append(pool_ctx)
    app.router.add_post("/v1/registrations", register)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pool", type=int, default=int(os.environ.get("NAIVE_POOL", "10")))
    args = parser.parse_args()
    settings = Settings.from_env()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(create_app(settings, args.pool), host=args.host, port=args.port,
                reuse_port=True, access_log=None, print=None)


if __name__ == "__main__":
    main()
