"""The real gateway with coalescing turned off: one EVALSHA of ``append.lua`` per
registration, sent as soon as the request is parsed, concurrently over redis-py's
connection pool. Everything else (validation, middleware, metrics, script) is the
gateway's own code, so the difference from the gateway is the batching alone.

    REDIS_URL=... DATABASE_URL=... GATEWAY_PORT=8183 python benchmarks/uncoalesced_service.py
"""

from __future__ import annotations

import asyncio

from gateway import app as gateway_app
from gateway.append import Appender, _log_crash
from gateway.runner import serve_one
from gateway.settings import Settings


class PerRequestAppender(Appender):
    """Each queued registration gets its own flush (a batch of one), in parallel."""

    def _start_flush(self, shard: int) -> None:
        loop = asyncio.get_running_loop()
        pending = self._queues.get(shard) or []
        self._queues[shard] = []
        self._busy.discard(shard)
        for item in pending:
            task = loop.create_task(self._flush(shard, [item]))
            task.add_done_callback(_log_crash)


def main() -> None:
    # create_app builds its appender from the name gateway.app imported.
    setattr(gateway_app, "Appender", PerRequestAppender)  # noqa: B010
    serve_one(Settings.from_env())


if __name__ == "__main__":
    main()
