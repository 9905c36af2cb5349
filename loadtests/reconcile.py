"""Did every accepted registration reach PostgreSQL exactly once?

Run after the writer drained. From the answers Locust recorded:

* **lost**: a registration id answered 202/200 that is neither a row in
  ``registrations`` nor a record in ``dead_letters``.
* **duplicated**: registration ids that should not exist: a second (third...) id
  accepted for one person; an id both stored and dead-lettered; a row whose identity
  document is stored twice; an accepted id dead-lettered as ``duplicate_identity``.
* **misattributed**: an accepted id whose stored row is another person's.
* dead letters of the run, counted by reason (a dead letter is accounted for, not lost).

Usable on its own: ``python loadtests/reconcile.py RESULTS_DIR --database-url URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.answers import Answer, person_label, read_answers

CHUNK = 5000


@dataclass
class Reconciliation:
    accepted_ids: int = 0
    accepted_answers: int = 0
    people_accepted: int = 0
    stored: int = 0
    dead_lettered: int = 0
    lost: int = 0
    duplicated: int = 0
    misattributed: int = 0
    people_with_several_ids: int = 0
    stored_and_dead_lettered: int = 0
    identity_rows_twice: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)  # accepted ids
    run_dead_letter_reasons: dict[str, int] = field(default_factory=dict)  # whole run
    rows_in_run: int = 0
    rows_never_answered: int = 0  # stored, but the client never saw a 200/202 for it
    lost_examples: list[str] = field(default_factory=list)
    duplicated_examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.misattributed == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _chunks(items: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), CHUNK):
        yield list(items[start : start + CHUNK])


async def reconcile(
    database_url: str, answers: Iterable[Answer], since: datetime | None = None
) -> Reconciliation:
    """Compare the answers with the database. ``since`` bounds the database-wide checks
    (duplicate identities, rows never answered, dead letters) to this run."""
    labels_of: dict[str, set[str]] = defaultdict(set)  # registration id -> person labels
    ids_of: dict[str, set[str]] = defaultdict(set)  # person label -> registration ids
    result = Reconciliation()
    for answer in answers:
        if not answer.accepted:
            continue
        result.accepted_answers += 1
        labels_of[answer.rid].add(answer.p)
        ids_of[answer.p].add(answer.rid)
    accepted = sorted(labels_of)
    result.accepted_ids = len(accepted)
    result.people_accepted = len(ids_of)
    stored: dict[str, str] = {}  # registration id -> label of the stored row's identity
    dead: dict[str, str] = {}  # registration id -> reason
    conn = await asyncpg.connect(database_url)
    try:
        for chunk in _chunks(accepted):
            for row in await conn.fetch(
                "SELECT registration_id, id_type, id_number FROM registrations"
                " WHERE registration_id = ANY($1::text[])",
                chunk,
            ):
                stored[row[0]] = person_label(f"{row[1]}:{row[2]}")
            for row in await conn.fetch(
                "SELECT registration_id, reason FROM dead_letters"
                " WHERE registration_id = ANY($1::text[])",
                chunk,
            ):
                dead[row[0]] = row[1]
        window = since or datetime.fromtimestamp(0, UTC)
        twice = await conn.fetch(
            """SELECT array_agg(registration_id ORDER BY received_at, registration_id)
               FROM registrations WHERE (id_type, id_number) IN (
                   SELECT id_type, id_number FROM registrations WHERE received_at >= $1)
               GROUP BY id_type, id_number HAVING count(*) > 1""",
            window,
        )
        run_rows = await conn.fetch(
            "SELECT registration_id FROM registrations WHERE received_at >= $1", window
        )
        reasons = await conn.fetch(
            "SELECT reason, count(*) FROM dead_letters WHERE created_at >= $1 GROUP BY reason",
            window,
        )
    finally:
        await conn.close()

    lost = [rid for rid in accepted if rid not in stored and rid not in dead]
    extra: set[str] = set()
    for rids in ids_of.values():
        if len(rids) > 1:
            result.people_with_several_ids += 1
            keep = min(rids, key=lambda rid: (rid not in stored, rid))
            extra.update(rid for rid in rids if rid != keep)
    both = {rid for rid in stored if rid in dead}
    extra |= both
    for (rids,) in twice:
        result.identity_rows_twice += len(rids) - 1
        extra.update(rids[1:])
    extra.update(rid for rid, reason in dead.items() if reason == "duplicate_identity")
    result.stored = len(stored)
    result.dead_lettered = len(dead)
    result.lost = len(lost)
    result.duplicated = len(extra)
    result.stored_and_dead_lettered = len(both)
    result.misattributed = sum(1 for rid, label in stored.items() if label not in labels_of[rid])
    result.dead_letter_reasons = dict(Counter(dead.values()))
    result.run_dead_letter_reasons = {row[0]: int(row[1]) for row in reasons}
    result.rows_in_run = len(run_rows)
    result.rows_never_answered = sum(1 for (rid,) in run_rows if rid not in labels_of)
    result.lost_examples = lost[:10]
    result.duplicated_examples = sorted(extra)[:10]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="run directory holding answers-*.jsonl")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--since", type=float, help="epoch seconds the run started")
    args = parser.parse_args(argv)
    since = datetime.fromtimestamp(args.since, UTC) if args.since else None
    outcome = asyncio.run(reconcile(args.database_url, read_answers(args.results), since))
    print(json.dumps(outcome.as_dict(), indent=1))
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
