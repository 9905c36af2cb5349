"""Prometheus metrics. Labels never carry personal data: routes are templates, outcomes
and reasons are fixed vocabularies."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
BACKLOG = Gauge("gateway_backlog_entries", "Entries in the intake streams not yet committed")
DEPENDENCY_UP = Gauge("gateway_dependency_up", "1 when the dependency answers", ["dependency"])

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
WRITER_OUTAGES = Counter("writer_outages_total", "Write attempts that failed on a dependency", ["dependency"])
