"""``gateway capacity``: turn measured per-process figures into a plan for a target surge.

    gateway capacity --peak-rps 55000 --hours 3
    gateway capacity --peak-rps 55000 --hours 3 --measured loadtests/results/<run>/capacity.json

The figures come from a load-test run's ``capacity.json`` (``loadtests/run.py`` writes
one per run), or from :data:`REFERENCE`, measured by the surge run whose report is
committed under ``loadtests/reports/``. They are CPU costs per unit of work, which carry
from one machine to another better than a throughput measured on a shared box:

* gateway CPU per request -> gateway processes (one core each, SO_REUSEPORT);
* Redis CPU per request -> Redis shards by CPU (a shard uses one core for commands);
* writer CPU per row -> writer processes; PostgreSQL CPU per row -> PostgreSQL cores;
* stream bytes per queued registration and dedupe-key bytes per person -> Redis memory.

The model is deliberately plain: a flat peak of ``--peak-rps`` for ``--hours`` (an upper
bound), processes run at ``--utilisation`` of a core to keep headroom for spikes, and a
backlog grows only when the writers are fewer than the arrival rate needs; the time to
drain it assumes arrivals stop when the peak ends (a lower bound if they go on). CPU only:
PostgreSQL's WAL and index writes and the network are to be checked separately.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from gateway import constants as c
from gateway.exceptions import ConfigurationError

GIB = 1024**3


@dataclass(frozen=True)
class Measured:
    gateway_cpu_s_per_request: float
    redis_cpu_s_per_request: float
    writer_cpu_s_per_row: float
    postgres_cpu_s_per_row: float
    stream_bytes_per_entry: float
    dedupe_bytes_per_person: float
    new_share: float  # share of requests that become a new registration (stream entry)
    source: str


# From loadtests/reports/surge/capacity.json: a surge of 100 users (about 120 requests/s)
# on a shared 2-CPU machine, 2 gateway processes and 1 writer. Per-request costs fall as
# concurrent requests share Redis round trips, so at launch-day rates these are upper
# bounds; measure your own hardware at your own rates and pass --measured.
REFERENCE = Measured(
    gateway_cpu_s_per_request=0.001657,
    redis_cpu_s_per_request=0.000272,
    writer_cpu_s_per_row=0.000193,
    postgres_cpu_s_per_row=0.000163,
    stream_bytes_per_entry=885.0,
    dedupe_bytes_per_person=210.0,
    new_share=0.85,
    source="reference surge run (loadtests/reports/surge)",
)


def load_measured(path: Path) -> Measured:
    """Figures from a run's ``capacity.json``; missing ones fall back to the reference."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        figures = data["figures"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigurationError(f"{path}: not a load-test capacity.json ({exc})") from exc
    per_request = figures.get("cpu_s_per_request") or {}
    per_row = figures.get("cpu_s_per_row") or {}
    requests = figures.get("requests") or 0

    def pick(value: Any, fallback: float) -> float:
        return float(value) if isinstance(value, int | float) and value > 0 else fallback

    return Measured(
        gateway_cpu_s_per_request=pick(
            per_request.get("gateway"), REFERENCE.gateway_cpu_s_per_request
        ),
        redis_cpu_s_per_request=pick(per_request.get("redis"), REFERENCE.redis_cpu_s_per_request),
        writer_cpu_s_per_row=pick(per_row.get("writer"), REFERENCE.writer_cpu_s_per_row),
        postgres_cpu_s_per_row=pick(per_row.get("postgres"), REFERENCE.postgres_cpu_s_per_row),
        stream_bytes_per_entry=pick(
            figures.get("stream_bytes_per_entry"), REFERENCE.stream_bytes_per_entry
        ),
        dedupe_bytes_per_person=pick(
            figures.get("dedupe_bytes_per_person"), REFERENCE.dedupe_bytes_per_person
        ),
        new_share=pick(
            figures.get("accepted", 0) / requests if requests else 0, REFERENCE.new_share
        ),
        source=str(path),
    )


@dataclass(frozen=True)
class Target:
    peak_rps: float
    hours: float
    utilisation: float = 0.6
    writers: int = 0  # 0: as many as keep up with the peak
    redis_shard_gib: float = 25.0  # usable memory per Redis shard (leave room for forks)
    dedupe_ttl_days: float = c.DEFAULT_DEDUPE_TTL_S / 86400


@dataclass(frozen=True)
class Plan:
    registrations_per_s: float
    registrations_total: int
    gateway_processes: int
    writer_processes: int
    postgres_cores: int
    redis_shards: int
    redis_shards_for_cpu: int
    redis_shards_for_memory: int
    redis_memory_gib: float
    dedupe_memory_gib: float
    peak_backlog: int
    backlog_memory_gib: float
    drain_rate_per_s: float
    time_to_drain_s: float
    gateway_requests_per_s_per_process: float
    writer_rows_per_s_per_process: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(target: Target, measured: Measured) -> Plan:
    if target.peak_rps <= 0 or target.hours <= 0:
        raise ConfigurationError("--peak-rps and --hours must be positive")
    if not 0 < target.utilisation <= 1:
        raise ConfigurationError("--utilisation must be in (0, 1]")
    util = target.utilisation
    new_rps = target.peak_rps * measured.new_share
    seconds = target.hours * 3600
    total = int(new_rps * seconds)
    gateway_ceiling = 1 / measured.gateway_cpu_s_per_request
    writer_ceiling = 1 / measured.writer_cpu_s_per_row
    writers = target.writers or math.ceil(new_rps / (writer_ceiling * util))
    # Catching up, writers run flat out: the drain rate is their full ceiling.
    drain = writers * writer_ceiling
    backlog = int(max(new_rps - drain, 0.0) * seconds)
    backlog_bytes = backlog * measured.stream_bytes_per_entry
    # Every person accepted within the dedupe TTL keeps a dedupe key.
    kept = int(new_rps * min(seconds, target.dedupe_ttl_days * 86400))
    dedupe_bytes = kept * measured.dedupe_bytes_per_person
    memory = dedupe_bytes + backlog_bytes
    shards_cpu = math.ceil(target.peak_rps * measured.redis_cpu_s_per_request / util)
    shards_memory = math.ceil(memory / (target.redis_shard_gib * GIB))
    return Plan(
        registrations_per_s=round(new_rps, 1),
        registrations_total=total,
        gateway_processes=math.ceil(target.peak_rps / (gateway_ceiling * util)),
        writer_processes=writers,
        postgres_cores=math.ceil(min(new_rps, drain) * measured.postgres_cpu_s_per_row / util),
        redis_shards=max(shards_cpu, shards_memory, 1),
        redis_shards_for_cpu=shards_cpu,
        redis_shards_for_memory=shards_memory,
        redis_memory_gib=round(memory / GIB, 2),
        dedupe_memory_gib=round(dedupe_bytes / GIB, 2),
        peak_backlog=backlog,
        backlog_memory_gib=round(backlog_bytes / GIB, 2),
        drain_rate_per_s=round(drain, 1),
        time_to_drain_s=round(backlog / drain, 1) if drain else math.inf,
        gateway_requests_per_s_per_process=round(gateway_ceiling * util, 1),
        writer_rows_per_s_per_process=round(writer_ceiling, 1),
    )


def render(target: Target, measured: Measured, result: Plan) -> str:
    r = result
    rows = [
        (
            "gateway processes",
            f"{r.gateway_processes:,}",
            f"{r.gateway_requests_per_s_per_process:,.0f} requests/s each",
        ),
        (
            "writer processes",
            f"{r.writer_processes:,}",
            f"{r.writer_rows_per_s_per_process:,.0f} rows/s each, flat out",
        ),
        ("PostgreSQL cores", f"{r.postgres_cores:,}", "for the rows committed"),
        (
            "Redis shards",
            f"{r.redis_shards:,}",
            (
                f"{r.redis_shards_for_cpu} for CPU, {r.redis_shards_for_memory} for memory"
                f" at {target.redis_shard_gib:g} GiB a shard"
            ),
        ),
        (
            "Redis memory",
            f"{r.redis_memory_gib:,.1f} GiB",
            f"dedupe keys {r.dedupe_memory_gib:,.1f} GiB, backlog {r.backlog_memory_gib:,.1f} GiB",
        ),
        ("peak backlog", f"{r.peak_backlog:,}", "entries"),
        ("drain rate", f"{r.drain_rate_per_s:,.0f}", "rows/s"),
        (
            "time to drain",
            f"{r.time_to_drain_s:,.0f} s",
            f"{r.time_to_drain_s / 3600:,.1f} h after the peak ends",
        ),
    ]
    head = (
        f"Target: {target.peak_rps:,.0f} requests/s for {target.hours:g} h"
        f" ({r.registrations_per_s:,.0f} new registrations/s, {r.registrations_total:,} in all);"
        f" processes at {target.utilisation:.0%} of a core.\nFigures: {measured.source}.\n"
    )
    return head + "\n".join(f"  {name:<18} {value:>12}   ({note})" for name, value, note in rows)


def cmd_capacity(args: argparse.Namespace) -> int:
    measured = load_measured(Path(args.measured)) if args.measured else REFERENCE
    overrides = {
        name: getattr(args, name)
        for name in (
            "gateway_cpu_s_per_request",
            "writer_cpu_s_per_row",
            "stream_bytes_per_entry",
            "dedupe_bytes_per_person",
            "new_share",
        )
        if getattr(args, name) is not None
    }
    if overrides:
        measured = replace(measured, **overrides, source=f"{measured.source}, with overrides")
    target = Target(
        peak_rps=args.peak_rps,
        hours=args.hours,
        utilisation=args.utilisation,
        writers=args.writers,
        redis_shard_gib=args.redis_shard_gib,
    )
    result = plan(target, measured)
    if args.json:
        print(
            json.dumps(
                {"target": asdict(target), "measured": asdict(measured), "plan": result.as_dict()},
                indent=1,
            )
        )
    else:
        print(render(target, measured, result))
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("capacity", help="processes, Redis memory and drain time for a target surge")
    p.add_argument("--peak-rps", type=float, required=True, help="requests per second at the peak")
    p.add_argument("--hours", type=float, required=True, help="how long the peak lasts")
    p.add_argument(
        "--measured", help="capacity.json of a load-test run (default: reference figures)"
    )
    p.add_argument("--utilisation", type=float, default=0.6, help="target CPU share per process")
    p.add_argument("--writers", type=int, default=0, help="fixed writer count (default: keep up)")
    p.add_argument(
        "--redis-shard-gib", type=float, default=25.0, help="usable memory per Redis shard"
    )
    p.add_argument("--gateway-cpu-s-per-request", type=float, help="override a measured figure")
    p.add_argument("--writer-cpu-s-per-row", type=float, help="override a measured figure")
    p.add_argument("--stream-bytes-per-entry", type=float, help="override a measured figure")
    p.add_argument("--dedupe-bytes-per-person", type=float, help="override a measured figure")
    p.add_argument("--new-share", type=float, help="share of requests that are new registrations")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_capacity)
