"""The HTTP ceiling: aiohttp + uvloop answering ``POST /v1/registrations`` with a 202 after
parsing the same JSON body, with no validation and no I/O.

One process per invocation, bound with SO_REUSEPORT like the gateway, so the benchmark
starts N of them on one port exactly as it starts N gateway processes.

    python benchmarks/bare_service.py --port 8181
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from datetime import UTC, datetime

import orjson
import uvloop
from aiohttp import web

MAX_BODY = 16 * 1024  # the gateway's default client_max_size


async def register(request: web.Request) -> web.Response:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return web.Response(status=400, body=b'{"error":"malformed_json"}',
                            content_type="application/json")
    if not isinstance(body, dict):
        return web.Response(status=422, body=b'{"error":"invalid_fields"}',
                            content_type="application/json")
    # An answer the size and shape of the gateway's 202.
    answer = {
        "registration_id": f"0-{time.time_ns() // 1_000_000}-0-{secrets.token_hex(5)}",
        "status": "queued",
        "received_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }
    return web.Response(status=202, body=orjson.dumps(answer), content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"alive"}', content_type="application/json")


def create_app() -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/v1/registrations", register)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(create_app(), host=args.host, port=args.port, reuse_port=True,
                access_log=None, print=None)


if __name__ == "__main__":
    main()
