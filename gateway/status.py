"""``gateway status``: the queue on one screen, and a probe.

Backlog, pending, lag and oldest age per shard; intake and drain rates; the time to drain
at those rates; writers alive; dead letters held with their top reasons. ``--watch``
refreshes it, ``--json`` prints it for scripts. The exit code is 0 when healthy and 1
otherwise, so the command serves as a liveness/readiness probe of the whole pipeline.

Unhealthy means one of: Redis or PostgreSQL unreachable, no writer alive, the oldest
registration not yet in PostgreSQL older than ``GATEWAY_ALERT_OLDEST_AGE_S``, or the
backlog above ``GATEWAY_ALERT_BACKLOG`` (default 80% of the shedding mark). Dead letters
held are shown but are not unhealthy: they wait for an operator, not for a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from gateway import constants as c
from gateway.settings import Settings

if TYPE_CHECKING:  # runtime imports are deferred: `gateway --help` loads no drivers
    from gateway.dlq import DeadLetterCounts
    from gateway.queue_stats import Point, QueueSnapshot, Rates


@dataclass
class Report:
    snapshot: QueueSnapshot | None
    rates: Rates | None
    dead: DeadLetterCounts | None
    postgres_up: bool
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    backlog_mark: int = 0
    oldest_age_mark_s: float = 0.0

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        from gateway.queue_stats import time_to_drain

        snap = self.snapshot
        out: dict[str, Any] = {
            "healthy": self.healthy,
            "problems": self.problems,
            "notes": self.notes,
            "redis_up": snap is not None,
            "postgres_up": self.postgres_up,
            "backlog_mark": self.backlog_mark,
            "oldest_age_mark_s": self.oldest_age_mark_s,
        }
        if snap is not None:
            out.update(
                taken_at=datetime.fromtimestamp(snap.taken_at, UTC).isoformat(timespec="seconds"),
                backlog=snap.backlog,
                pending=snap.pending,
                lag=snap.lag,
                oldest_age_s=round(snap.oldest_age_s, 3),
                writers_alive=snap.writers_alive,
                drained_total=snap.drained_total,
                shards=[
                    {
                        "shard": s.shard,
                        "backlog": s.backlog,
                        "pending": s.pending,
                        "lag": s.lag,
                        "oldest_age_s": round(s.oldest_age_s, 3),
                    }
                    for s in snap.shards
                ],
                time_to_drain_s=_round(time_to_drain(snap.backlog, self.rates)),
            )
        if self.rates is not None:
            out.update(
                intake_per_s=round(self.rates.intake_per_s, 1),
                drain_per_s=round(self.rates.drain_per_s, 1),
            )
        else:
            out.update(intake_per_s=None, drain_per_s=None)
        if self.dead is not None:
            out["dead_letters"] = {
                "by_state": self.dead.by_state,
                "held_by_reason": dict(self.dead.held_by_reason),
            }
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def backlog_mark(settings: Settings) -> int:
    return settings.alert_backlog or int(settings.backlog_high_water * c.ALERT_BACKLOG_SHARE)


def build_report(
    snapshot: QueueSnapshot | None,
    points: list[Point],
    dead: DeadLetterCounts | None,
    postgres_up: bool,
    settings: Settings,
    postgres_error: str = "",
) -> Report:
    from gateway.queue_stats import rates

    report = Report(
        snapshot,
        rates(points),
        dead,
        postgres_up,
        backlog_mark=backlog_mark(settings),
        oldest_age_mark_s=settings.alert_oldest_age_s,
    )
    if snapshot is None:
        report.problems.append("redis unreachable: intake answers 503 and nothing drains")
    else:
        if snapshot.writers_alive == 0:
            report.problems.append(
                f"no writer alive (no heartbeat for {c.WRITER_HEARTBEAT_TTL_S}s): "
                "nothing is being written to PostgreSQL"
            )
        if snapshot.oldest_age_s > settings.alert_oldest_age_s:
            report.problems.append(
                f"oldest registration not yet stored is {_duration(snapshot.oldest_age_s)} old "
                f"(mark {_duration(settings.alert_oldest_age_s)})"
            )
        if snapshot.backlog > backlog_mark(settings):
            report.problems.append(
                f"backlog {snapshot.backlog:,} above the mark {backlog_mark(settings):,}"
            )
    if not postgres_up:
        why = f" ({postgres_error})" if postgres_error else ""
        report.problems.append(f"postgresql unavailable{why}: registrations queue up in Redis")
    if dead is not None and dead.held:
        report.notes.append(f"{dead.held} dead letter(s) held: `gateway dlq list`")
    return report


class Collector:
    """Gathers reports from Redis and PostgreSQL, remembering its own points between
    calls so that ``--watch`` has rates even where no gateway records history."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.points: list[Point] = []

    async def report(self, redis: Any, letters: Any) -> Report:
        from gateway.exceptions import DependencyUnavailable
        from gateway.queue_stats import QueueStats

        stats = QueueStats(redis, self.settings)
        snapshot = None
        try:
            snapshot = await stats.snapshot()
            history = await stats.history(60)
            point = snapshot.point()
            own = [p for p in self.points if point.t - p.t <= 60]
            if history and point.t - history[-1].t <= 5:
                own = history  # a gateway is recording: use the shared history
            self.points = [p for p in own if p.t < point.t] + [point]
        except DependencyUnavailable:
            pass
        postgres_up, dead, error = True, None, ""
        try:
            dead = await asyncio.wait_for(letters.counts(), timeout=5)
        except DependencyUnavailable as exc:
            postgres_up, error = False, exc.reason
        except TimeoutError:
            postgres_up, error = False, "timed out"
        return build_report(snapshot, self.points, dead, postgres_up, self.settings, error)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "never at this rate"
    if seconds < 90:
        return f"{seconds:.1f}s"
    if seconds < 5400:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"


def render(report: Report, settings: Settings) -> str:
    from gateway.queue_stats import time_to_drain

    snap = report.snapshot
    verdict = "HEALTHY" if report.healthy else "UNHEALTHY"
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    header = (
        f"intake queue  {now}   redis {'up' if snap else 'DOWN'}   "
        f"postgres {'up' if report.postgres_up else 'DOWN'}   {verdict}"
    )
    lines = [
        header,
        "",
    ]
    if snap is not None:
        lines.append(
            f"  {'shard':>5}  {'backlog':>10}  {'pending':>9}  {'lag':>10}  {'oldest age':>11}"
        )
        for s in snap.shards:
            lines.append(
                f"  {s.shard:>5}  {s.backlog:>10,}  {s.pending:>9,}  {s.lag:>10,}  "
                f"{_duration(s.oldest_age_s) if s.backlog else '-':>11}"
            )
        if len(snap.shards) > 1:
            lines.append(
                f"  {'all':>5}  {snap.backlog:>10,}  {snap.pending:>9,}  {snap.lag:>10,}  "
                f"{_duration(snap.oldest_age_s) if snap.backlog else '-':>11}"
            )
        lines.append("")
        r = report.rates
        intake = f"{r.intake_per_s:,.0f}/s" if r else "n/a"
        drain = f"{r.drain_per_s:,.0f}/s" if r else "n/a"
        if not snap.backlog:
            eta_text = "nothing queued"
        else:
            eta_text = "n/a" if r is None else _duration(time_to_drain(snap.backlog, r))
        lines.append(f"  intake {intake:>10}   drain {drain:>10}   time to drain {eta_text}")
        lines.append(
            f"  writers alive {snap.writers_alive}   "
            f"marks: backlog {backlog_mark(settings):,}, oldest age "
            f"{_duration(settings.alert_oldest_age_s)}"
        )
    if report.dead is not None:
        top = ", ".join(f"{reason} {n}" for reason, n in report.dead.held_by_reason[:3])
        lines.append(f"  dead letters held {report.dead.held}" + (f" ({top})" if top else ""))
    for problem in report.problems:
        lines.append(f"  ! {problem}")
    for note in report.notes:
        lines.append(f"  - {note}")
    return "\n".join(lines)


def cli_settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment; where REDIS_URL / DATABASE_URL are unset, those of
    the stack ``gateway run`` started from this directory."""
    data_dir = getattr(args, "data_dir", None)
    if data_dir:
        from gateway import runner

        apply = getattr(runner, "apply_stack_env", None)
        if apply is not None:
            apply(data_dir)
    return Settings.from_env()


async def run_status(
    settings: Settings, *, watch: bool, interval: float, as_json: bool, sample_s: float
) -> int:
    from gateway.connections import client
    from gateway.dlq import DeadLetters
    from gateway.exceptions import DependencyUnavailable
    from gateway.store import Store, connect_pool

    redis = client(settings, timeout_s=3.0)
    store = None
    try:
        # No connection floor: the pool connects on use, so --watch recovers when the
        # database comes back and nothing retries (and logs) behind the screen.
        pool = await connect_pool(settings.with_changes(pg_pool_max=1), min_size=0, attempts=1)
        store = Store(pool)
    except DependencyUnavailable:
        pass
    letters: Any = DeadLetters(store) if store is not None else _NoDatabase()
    collector = Collector(settings)
    code = 1
    try:
        while True:
            report = await collector.report(redis, letters)
            if report.snapshot is not None and report.rates is None and not watch and sample_s > 0:
                await asyncio.sleep(sample_s)  # no recorded history: measure the rates now
                report = await collector.report(redis, letters)
            code = 0 if report.healthy else 1
            text = (
                orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode()
                if as_json
                else render(report, settings)
            )
            if watch and not as_json and sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")
            print(text, flush=True)
            if not watch:
                return code
            await asyncio.sleep(interval)
    finally:
        await redis.aclose()
        if store is not None:
            await store.close()


class _NoDatabase:
    async def counts(self) -> Any:
        from gateway.exceptions import DependencyUnavailable

        raise DependencyUnavailable("postgres", "not connected")


def cmd_status(args: argparse.Namespace) -> int:
    settings = cli_settings(args)
    try:
        return asyncio.run(
            run_status(
                settings,
                watch=args.watch,
                interval=args.interval,
                as_json=args.json,
                sample_s=args.sample,
            )
        )
    except KeyboardInterrupt:
        return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("status", help="the queue at a glance; exit 1 when unhealthy (a probe)")
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--sample",
        type=float,
        default=3.0,
        help="without recorded history, seconds to watch for the rates (0: skip)",
    )
    p.add_argument("--data-dir", default=".data", help="where `gateway run` keeps its data")
    p.set_defaults(func=cmd_status)
