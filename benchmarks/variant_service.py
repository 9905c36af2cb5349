"""The real gateway with another append strategy, to measure what the coalescing appender
buys and what a variant of it would. Everything else (validation, middleware, metrics,
``append.lua``) is the gateway's own code, so the difference is the strategy alone.

* ``uncoalesced``: one EVALSHA per registration, sent as soon as the request is parsed,
  concurrently over redis-py's connection pool;
* ``inflight2``: the coalescing appender allowing two flushes in flight per shard instead
  of one, so that a batch can leave while the previous one waits for Redis.

    REDIS_URL=... DATABASE_URL=... GATEWAY_PORT=8183 \\
        python benchmarks/variant_service.py --variant uncoalesced
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter

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


class InFlightAppender(Appender):
    """Up to LIMIT flush loops per shard; while fewer run, a loop that has taken its
    batch lets the next arrival start another one."""

    LIMIT = 2

    def _start_flush(self, shard: int) -> None:
        running = self.__dict__.setdefault("_running", Counter())
        running[shard] += 1
        task = asyncio.get_running_loop().create_task(self._loop(shard))
        task.add_done_callback(_log_crash)

    async def _loop(self, shard: int) -> None:
        running: Counter[int] = self.__dict__["_running"]
        try:
            while self._queues.get(shard):
                batch = self._queues[shard][: self._settings.append_max_batch]
                del self._queues[shard][: len(batch)]
                if running[shard] < self.LIMIT:
                    self._busy.discard(shard)
                await self._flush(shard, batch)
        finally:
            running[shard] -= 1
            if running[shard] == 0:
                self._busy.discard(shard)
            if self._queues.get(shard) and shard not in self._busy:
                self._busy.add(shard)
                asyncio.get_running_loop().call_soon(self._start_flush, shard)


VARIANTS: dict[str, type[Appender]] = {
    "uncoalesced": PerRequestAppender,
    "inflight2": InFlightAppender,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    args = parser.parse_args()
    # create_app builds its appender from the name gateway.app imported.
    setattr(gateway_app, "Appender", VARIANTS[args.variant])  # noqa: B010
    serve_one(Settings.from_env())


if __name__ == "__main__":
    main()
