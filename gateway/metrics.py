"""Prometheus metrics. Labels never carry personal data: routes are templates, outcomes
and reasons are fixed vocabularies, shards are numbers.

Two kinds live here. Counters and histograms that each process updates (HTTP requests,
writer batches); with several processes behind one port they are kept in
``PROMETHEUS_MULTIPROC_DIR`` (set up by the ``serve``/``writer`` supervisors in
``gateway.runner``) and every process answers ``/metrics`` with the sum of all. And the
queue's own state (backlog, pending, lag, oldest age, writers alive, dead letters), which
is one fact for the whole deployment: it is read from Redis and PostgreSQL when scraped
(:class:`QueueCollector`), so every gateway and writer endpoint reports the same values.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.dlq import CountCache, DeadLetterCounts
    from gateway.queue_stats import QueueSnapshot
    from gateway.settings import Settings
    from gateway.store import Store

log = logging.getLogger(__name__)

HTTP_REQUESTS = Counter(
    "gateway_http_requests_total", "HTTP requests by route template and status", ["route", "status"]
)
HTTP_LATENCY = Histogram(
    "gateway_http_request_seconds",
    "HTTP request latency by route template",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REGISTRATIONS = Counter(
    "gateway_registrations_total",
    "Registration outcomes at the gateway",
    ["outcome"],  # queued, replayed, conflict, invalid
)
SHED = Counter("gateway_shed_total", "Requests shed with 503/429", ["reason"])
APPEND_BATCH = Histogram(
    "gateway_append_batch_size",
    "Registrations per Redis round trip",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
BACKLOG = Gauge(
    "gateway_backlog_entries",
    "Entries in the intake streams not yet committed, as last seen for shedding",
    multiprocess_mode="livemostrecent",
)
DEPENDENCY_UP = Gauge(
    "gateway_dependency_up",
    "1 when the dependency answers",
    ["dependency"],
    multiprocess_mode="livemostrecent",
)

WRITER_ROWS = Counter("writer_rows_total", "Rows committed to PostgreSQL")
WRITER_DEAD_LETTERS = Counter("writer_dead_letters_total", "Records dead-lettered", ["reason"])
WRITER_BATCH = Histogram(
    "writer_batch_size", "Entries per writer batch", buckets=(1, 10, 50, 100, 250, 500, 1000, 2000)
)
WRITER_COMMIT_SECONDS = Histogram(
    "writer_commit_seconds",
    "Time to write and commit one batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WRITER_RECLAIMED = Counter("writer_reclaimed_total", "Entries reclaimed from dead consumers")
WRITER_DELETED_PENDING = Counter(
    "writer_deleted_pending_total", "Pending entries found deleted from the stream"
)
WRITER_GROUP_RECREATED = Counter(
    "writer_group_recreated_total", "Consumer group or stream found missing and recreated"
)
WRITER_OUTAGES = Counter(
    "writer_outages_total", "Write attempts that failed on a dependency", ["dependency"]
)


# -- the queue, read at scrape time -------------------------------------------------------
class QueueCollector:
    """The queue's state as metric families, from a snapshot taken for this scrape."""

    def __init__(self, snapshot: QueueSnapshot | None, dead: DeadLetterCounts | None) -> None:
        self.snapshot = snapshot
        self.dead = dead

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        if snap is not None:
            families = (
                ("gateway_queue_backlog", "Entries not yet committed to PostgreSQL", "backlog"),
                (
                    "gateway_queue_pending",
                    "Entries delivered to a writer, not yet committed",
                    "pending",
                ),
                ("gateway_queue_lag", "Entries not yet delivered to any writer", "lag"),
                (
                    "gateway_queue_oldest_age_seconds",
                    "Age of the oldest registration not yet committed (0 when none)",
                    "oldest_age_s",
                ),
            )
            for name, text, attr in families:
                family = GaugeMetricFamily(name, text, labels=["shard"])
                for shard in snap.shards:
                    family.add_metric([str(shard.shard)], float(getattr(shard, attr)))
                yield family
            added = CounterMetricFamily(
                "gateway_queue_entries_added",
                "Entries ever appended to each intake stream",
                labels=["shard"],
            )
            for shard in snap.shards:
                added.add_metric([str(shard.shard)], float(shard.entries_added))
            yield added
            yield CounterMetricFamily(
                "gateway_queue_drained",
                "Rows committed by all writers (writers:drained)",
                value=float(snap.drained_total),
            )
            yield GaugeMetricFamily(
                "gateway_writers_alive",
                "Writers with a heartbeat in the last 15 s",
                value=float(snap.writers_alive),
            )
        if self.dead is not None:
            family = GaugeMetricFamily(
                "gateway_dead_letters",
                "Dead letters by state and reason",
                labels=["state", "reason"],
            )
            for state, reason, n in self.dead.by_state_reason:
                family.add_metric([state, reason], float(n))
            for state in ("held", "replayed", "dropped"):  # the alert rules need the series
                if not any(s == state for s, _r, _n in self.dead.by_state_reason):
                    family.add_metric([state, "none"], 0.0)
            yield family


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


def exposition(snapshot: QueueSnapshot | None, dead: DeadLetterCounts | None) -> bytes:
    """The whole /metrics text: this process's (or all processes') metrics + the queue."""
    queue = CollectorRegistry(auto_describe=False)
    queue.register(QueueCollector(snapshot, dead))
    if multiprocess_dir():
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry) + generate_latest(queue)
    return generate_latest(REGISTRY) + generate_latest(queue)


async def queue_facts(
    redis: Any, settings: Settings, dead_cache: CountCache
) -> tuple[QueueSnapshot | None, DeadLetterCounts | None]:
    """A fresh snapshot (None when Redis is down) and the cached dead-letter counts;
    records both dependencies' availability."""
    from gateway.exceptions import DependencyUnavailable
    from gateway.queue_stats import QueueStats

    snapshot = None
    try:
        snapshot = await asyncio.wait_for(QueueStats(redis, settings).snapshot(), timeout=3.0)
    except (TimeoutError, DependencyUnavailable):
        pass
    DEPENDENCY_UP.labels("redis").set(1 if snapshot is not None else 0)
    dead = await dead_cache.get()
    if dead_cache.letters is not None:
        DEPENDENCY_UP.labels("postgres").set(1 if dead_cache.ok else 0)
    return snapshot, dead


async def start_writer_endpoint(
    settings: Settings, redis: Any, store: Store
) -> web.AppRunner | None:
    """The writer's /metrics on GATEWAY_WRITER_METRICS_PORT (SO_REUSEPORT: every writer
    process binds it and any of them answers for all). Never fatal: a writer that cannot
    bind still writes."""
    from aiohttp import web

    from gateway import constants as c
    from gateway.dlq import CountCache, DeadLetters

    if not settings.writer_metrics_port:
        return None
    cache = CountCache(DeadLetters(store), c.DEAD_LETTER_COUNT_CACHE_S)

    async def metrics_view(request: web.Request) -> web.Response:
        snapshot, dead = await queue_facts(redis, settings, cache)
        return web.Response(
            body=exposition(snapshot, dead), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(
            runner, settings.host, settings.writer_metrics_port, reuse_port=True
        ).start()
    except OSError as exc:
        log.warning(
            "writer metrics endpoint not started: %s",
            type(exc).__name__,
            extra={"port": settings.writer_metrics_port},
        )
        await runner.cleanup()
        return None
    return runner
