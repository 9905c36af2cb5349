"""Dead letters: records the writer could not store, and what an operator does with them.

``gateway dlq list | show ID | replay [ID…] | drop ID``. A replay sends the record back
through validation and the normal idempotent append, the same path as a request, so it
is judged by today's rules and reference data and can never create a second row for
the same person: the Redis dedupe key and the database's unique identity stand in the
way exactly as for a client's retry. A record that still fails validation stays held;
fix it (``show ID --body > f.json``, edit, ``replay ID --body f.json``) and replay again.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson

from gateway.exceptions import DependencyUnavailable
from gateway.settings import Settings
from gateway.store import Q, Store

STATES = ("held", "replayed", "dropped")


@dataclass(frozen=True)
class DeadLetterCounts:
    by_state: dict[str, int] = field(default_factory=dict)
    held_by_reason: list[tuple[str, int]] = field(default_factory=list)  # most first
    by_state_reason: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def held(self) -> int:
        return self.by_state.get("held", 0)


class DeadLetters:
    """Reads and resolves rows of ``dead_letters`` through the store's pool."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def counts(self) -> DeadLetterCounts:
        async with self.store.connection() as conn:
            rows = await conn.fetch(Q["dead_letter_counts"])
        by_state: dict[str, int] = {}
        held: dict[str, int] = {}
        triples = []
        for row in rows:
            state, reason, n = str(row["state"]), str(row["reason"]), int(row["n"])
            by_state[state] = by_state.get(state, 0) + n
            triples.append((state, reason, n))
            if state == "held":
                held[reason] = held.get(reason, 0) + n
        ranked = sorted(held.items(), key=lambda kv: (-kv[1], kv[0]))
        return DeadLetterCounts(by_state, ranked, sorted(triples))

    async def recent(self, state: str | None, reason: str | None, limit: int) -> list[dict[str, Any]]:
        async with self.store.connection() as conn:
            rows = await conn.fetch(Q["list_dead_letters"], state, reason, limit)
        return [dict(row) for row in rows]

    async def get(self, letter_id: int) -> dict[str, Any] | None:
        async with self.store.connection() as conn:
            row = await conn.fetchrow(Q["get_dead_letter"], letter_id)
        return dict(row) if row is not None else None

    async def first_arrival(self, row: dict[str, Any]) -> str:
        """When the person first submitted: the entry id of the first letter in a chain
        of replays (a replay that failed again is a new letter whose registration id is
        the previous letter's ``replayed_as``)."""
        entry_id = str(row["entry_id"])
        rid = row["registration_id"]
        async with self.store.connection() as conn:
            for _ in range(20):
                if rid is None:
                    break
                earlier = await conn.fetchrow(Q["dead_letter_replayed_as"], rid)
                if earlier is None:
                    break
                entry_id, rid = str(earlier["entry_id"]), earlier["registration_id"]
        return _arrival(entry_id)

    async def held_ids(self, reason: str | None) -> list[int]:
        async with self.store.connection() as conn:
            return [int(r[0]) for r in await conn.fetch(Q["held_dead_letter_ids"], reason)]

    async def resolve(self, letter_id: int, state: str, replayed_as: str | None, note: str) -> bool:
        """Move a held letter to ``replayed`` or ``dropped``; False when it was not held."""
        async with self.store.connection() as conn:
            return (
                await conn.fetchval(Q["resolve_dead_letter"], letter_id, state, replayed_as, note)
                is not None
            )


class CountCache:
    """Dead-letter counts for /metrics and the live page, read at most every few seconds."""

    def __init__(self, letters: DeadLetters | None, max_age_s: float) -> None:
        self.letters = letters
        self.max_age_s = max_age_s
        self.value: DeadLetterCounts | None = None
        self.ok = False
        self.error = "not connected" if letters is None else ""
        self._read_at = -1e9
        self._lock = asyncio.Lock()

    async def get(self) -> DeadLetterCounts | None:
        if self.letters is None:
            return None
        async with self._lock:
            if time.monotonic() - self._read_at >= self.max_age_s:
                self._read_at = time.monotonic()
                try:
                    self.value = await asyncio.wait_for(self.letters.counts(), timeout=3.0)
                    self.ok, self.error = True, ""
                except DependencyUnavailable as exc:
                    self.ok, self.error = False, exc.reason
                except TimeoutError:
                    self.ok, self.error = False, "timed out"
        return self.value


def request_body(payload_text: str | None) -> dict[str, Any]:
    """The request body a stored payload came from (the payload is the normalised
    registration; the request also carries the consent it required)."""
    if not payload_text:
        raise ValueError("the dead letter has no payload; replay it with --body FILE")
    try:
        payload = orjson.loads(payload_text)
    except orjson.JSONDecodeError:
        raise ValueError("the stored payload is not JSON; replay it with --body FILE") from None
    if not isinstance(payload, dict):
        raise ValueError(  # noqa: TRY004 - the operator's error message, caught as ValueError
            "the stored payload is not an object; replay it with --body FILE"
        )
    body = {k: v for k, v in payload.items() if k != "identity_key" and v is not None}
    body["consent"] = True
    return body


@dataclass(frozen=True)
class ReplayResult:
    letter_id: int
    outcome: str  # replayed | already_queued | conflict | invalid | not_held | unreadable
    registration_id: str = ""
    detail: str = ""


async def replay(
    settings: Settings, letter_ids: Sequence[int], body_override: dict[str, Any] | None = None
) -> list[ReplayResult]:
    """Validate and append each held letter as a new submission; mark it replayed."""
    from gateway.append import APPENDED, REPLAYED, Appender
    from gateway.connections import connect
    from gateway.identity import Hasher
    from gateway.reference import ReferenceCache
    from gateway.validation import ValidationFailed, validate

    store = await Store.open(settings, migrate_schema=False)
    redis = await connect(settings, attempts=3)
    letters = DeadLetters(store)
    results: list[ReplayResult] = []
    try:
        reference = ReferenceCache(settings, redis, store)
        if not await reference.refresh():
            raise DependencyUnavailable("postgres", "reference data not loaded")
        appender = Appender(redis, settings, Hasher.from_secret(settings.identity_secret))
        for letter_id in letter_ids:
            row = await letters.get(letter_id)
            if row is None or row["state"] != "held":
                results.append(
                    ReplayResult(
                        letter_id, "not_held", detail=row["state"] if row else "no such id"
                    )
                )
                continue
            try:
                body = body_override if body_override is not None else request_body(row["payload"])
            except ValueError as exc:
                results.append(ReplayResult(letter_id, "unreadable", detail=str(exc)))
                continue
            try:
                registration = validate(
                    body,
                    channel=None,
                    reference=reference,
                    today=date.today(),
                    min_age_years=settings.min_age_years,
                )
            except ValidationFailed as exc:
                codes = ", ".join(f"{k}: {v.code}" for k, v in sorted(exc.errors.items()))
                results.append(ReplayResult(letter_id, "invalid", detail=codes))
                continue
            # The letter's id as Idempotency-Key: replaying it again (say after a crash
            # between the append and the update below) is a replay, not a second person.
            result = await appender.append(
                registration,
                idempotency_key=f"dead-letter:{letter_id}",
                received_at=await letters.first_arrival(row),
            )
            if result.outcome in (APPENDED, REPLAYED):
                outcome = "replayed" if result.outcome == APPENDED else "already_queued"
                await letters.resolve(letter_id, "replayed", result.registration_id, outcome)
                results.append(ReplayResult(letter_id, outcome, result.registration_id))
            else:
                results.append(
                    ReplayResult(
                        letter_id,
                        "conflict",
                        detail="identity registered with different details: fix or drop it",
                    )
                )
    finally:
        await redis.aclose()
        await store.close()
    return results


def _arrival(entry_id: str) -> str:
    """When the person first submitted: the stream entry id's milliseconds. Keeping it
    keeps their place in the site's first-come queue."""
    try:
        ms = int(entry_id.partition("-")[0])
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    except (ValueError, OverflowError, OSError):
        return datetime.now(UTC).isoformat(timespec="milliseconds")


# -- command line ----------------------------------------------------------------------
def _settings(args: argparse.Namespace) -> Settings:
    from gateway.status import cli_settings

    return cli_settings(args)


async def _with_letters(settings: Settings, action: Any) -> Any:
    store = await Store.open(settings, migrate_schema=False)
    try:
        return await action(DeadLetters(store))
    finally:
        await store.close()


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def cmd_list(args: argparse.Namespace) -> int:
    state = None if args.state == "all" else args.state
    rows = asyncio.run(
        _with_letters(_settings(args), lambda d: d.recent(state, args.reason, args.limit))
    )
    if args.json:
        print(orjson.dumps(rows, default=str, option=orjson.OPT_INDENT_2).decode())
        return 0
    if not rows:
        print(f"no dead letters ({args.state})")
        return 0
    print(f"{'ID':>6}  {'CREATED (UTC)':19}  {'STATE':8}  {'REASON':22}  {'TRIES':>5}  DETAIL")
    for r in rows:
        detail = str(r["detail"]).replace("\n", " ")
        print(
            f"{r['id']:>6}  {_when(r['created_at']):19}  {r['state']:8}  {r['reason']:22}  "
            f"{r['deliveries']:>5}  {detail[:70]}"
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    row = asyncio.run(_with_letters(_settings(args), lambda d: d.get(args.id)))
    if row is None:
        print(f"no dead letter {args.id}", file=sys.stderr)
        return 1
    if args.body:
        try:
            body = request_body(row["payload"])
        except ValueError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        print(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        return 0
    for key in (
        "id",
        "state",
        "reason",
        "detail",
        "deliveries",
        "registration_id",
        "stream",
        "entry_id",
        "replayed_as",
        "note",
    ):
        print(f"{key:16} {row.get(key) if row.get(key) not in (None, '') else '-'}")
    print(f"{'created':16} {_when(row['created_at'])}\n{'resolved':16} {_when(row['resolved_at'])}")
    print("payload (personal data: do not paste it into tickets or chats):")
    payload = row["payload"]
    try:
        print(orjson.dumps(orjson.loads(payload), option=orjson.OPT_INDENT_2).decode())
    except (orjson.JSONDecodeError, TypeError):
        print(payload if payload is not None else "-")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    settings = _settings(args)
    override = None
    if args.body:
        if len(args.ids) != 1:
            print("--body replaces the record of exactly one ID", file=sys.stderr)
            return 2
        raw = sys.stdin.buffer.read() if args.body == "-" else Path(args.body).read_bytes()
        override = orjson.loads(raw)
    ids = list(args.ids)
    if args.all:
        ids = asyncio.run(_with_letters(settings, lambda d: d.held_ids(args.reason)))
    if not ids:
        print("nothing to replay (give IDs, or --all [--reason R])", file=sys.stderr)
        return 2
    results = asyncio.run(replay(settings, ids, override))
    failed = 0
    for r in results:
        if r.outcome in ("replayed", "already_queued"):
            print(f"{r.letter_id}: {r.outcome} as {r.registration_id}")
        else:
            failed += 1
            print(f"{r.letter_id}: {r.outcome}: {r.detail}")
    print(f"{len(results) - failed} replayed, {failed} still held or skipped")
    return 0 if failed == 0 else 1


def cmd_drop(args: argparse.Namespace) -> int:
    done = asyncio.run(
        _with_letters(_settings(args), lambda d: d.resolve(args.id, "dropped", None, args.note))
    )
    print(f"{args.id}: dropped" if done else f"{args.id}: not held (unknown, replayed or dropped)")
    return 0 if done else 1


def add_commands(sub: Any) -> None:
    p = sub.add_parser("dlq", help="dead letters: list, show, replay, drop")
    p.add_argument("--data-dir", default=".data", help="where `gateway run` keeps its data")
    dlq = p.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    q = dlq.add_parser("list", help="list dead letters (no personal data)")
    q.add_argument("--state", default="held", choices=(*STATES, "all"))
    q.add_argument("--reason", help="only this reason (e.g. rejected_by_database)")
    q.add_argument("--limit", type=int, default=50)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_list)
    q = dlq.add_parser("show", help="one dead letter with its payload (personal data)")
    q.add_argument("id", type=int)
    q.add_argument(
        "--body", action="store_true", help="print only the request body, to edit and replay"
    )
    q.set_defaults(func=cmd_show)
    q = dlq.add_parser("replay", help="validate and append again; a fixed record is not duplicated")
    q.add_argument("ids", type=int, nargs="*")
    q.add_argument(
        "--all", action="store_true", help="every held letter (with --reason: of that reason)"
    )
    q.add_argument("--reason")
    q.add_argument("--body", help="a corrected request body (JSON file, - for stdin) for one ID")
    q.set_defaults(func=cmd_replay)
    q = dlq.add_parser("drop", help="give up on a dead letter (kept, marked dropped)")
    q.add_argument("id", type=int)
    q.add_argument("--note", default="", help="why, for the next operator")
    q.set_defaults(func=cmd_drop)
