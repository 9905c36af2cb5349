"""The load test's reconciliation catches a broken build, against real Redis and
PostgreSQL: a writer that acknowledges before its commit loses registrations, an append
that skips the dedupe key duplicates them, and both fail the verdict."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway import append as append_module
from gateway.connections import connect
from gateway.datagen import Generator, identity_of
from gateway.scripts import load_script
from gateway.settings import Settings
from gateway.store import Store
from gateway.stream import Streams
from gateway.writer import Writer, consumer_name
from loadtests.answers import Answer, AnswerFile, person_label, read_answers
from loadtests.figures import Figures
from loadtests.reconcile import reconcile
from loadtests.report import verdict
from tests.conftest import make_client, wait_for

OBJECTIVES = {
    "p99_ms": 500.0,
    "max_error_rate": 0.001,
    "max_unexpected_rate": 0.01,
    "max_lost": 0.0,
    "max_duplicated": 0.0,
}
DEDUPE_CHECK = "local record = redis.call('GET', KEYS[i])"


async def submit(client: TestClient[Any, Any], body: dict[str, Any], kind: str = "new") -> Answer:
    """POST like a front end and record the answer like the Locust users do."""
    headers = {"Content-Type": "application/json", "X-Channel": str(body["channel"])}
    started = time.time()
    async with client.post("/v1/registrations", data=orjson.dumps(body), headers=headers) as resp:
        answer = orjson.loads(await resp.read())
        status = resp.status
    return Answer(
        started,
        1.0,
        status,
        str(answer.get("registration_id") or ""),
        person_label(identity_of(body)),
        kind,
        str(body["channel"]),
    )


class AcksBeforeCommit(Writer):
    """The broken build: acknowledges and deletes a batch first, then writes it; a crash
    in between loses the batch, whose clients were all told 202."""

    crash = False

    async def process(self, entries: Any) -> None:
        await self.streams.ack_and_delete(entries)
        if self.crash:
            raise ConnectionError("writer crashed between its XACK and its COMMIT")
        await super().process(entries)


@pytest.fixture
async def writer_factory(settings: Settings) -> AsyncIterator[Callable[[type[Writer]], Any]]:
    opened: list[Any] = []

    async def make(cls: type[Writer] = Writer) -> Writer:
        redis = await connect(settings)
        store = await Store.open(settings, migrate_schema=False)
        opened.extend([redis, store])
        writer = cls(settings, Streams(redis, settings, consumer_name()), store)
        await writer.streams.ensure_groups()
        return writer

    yield make
    for resource in opened:
        await (resource.aclose() if hasattr(resource, "aclose") else resource.close())


async def drain(writer: Writer, redis: Any, settings: Settings) -> None:
    async def empty() -> bool:
        await writer.step()
        return int(await redis.xlen(settings.stream_key(0))) == 0

    await wait_for(empty, timeout=20, interval=0)


def people(count: int, seed: int) -> list[dict[str, Any]]:
    gen = Generator(seed)
    return [gen.person() for _ in range(count)]


async def test_clean_run_reconciles_with_nothing_lost_or_duplicated(
    client: TestClient[Any, Any],
    settings: Settings,
    redis: Any,
    writer_factory: Any,
    tmp_path: Path,
) -> None:
    bodies = people(25, seed=31)
    answers = [await submit(client, body) for body in bodies]
    # Client retries and respelled resubmissions are answered 200 with the same ids.
    answers += [await submit(client, body, "retry") for body in bodies[:4]]
    answers += [
        await submit(client, Generator(5).respelled(body), "respelled") for body in bodies[4:7]
    ]
    assert [a.s for a in answers].count(202) == 25
    assert [a.s for a in answers].count(200) == 7
    await drain(await writer_factory(), redis, settings)
    sink = AnswerFile(tmp_path / "answers-test-1.jsonl")
    sink.write(answers)
    sink.close()

    outcome = await reconcile(settings.database_url, read_answers(tmp_path))

    assert (outcome.accepted_ids, outcome.stored, outcome.people_accepted) == (25, 25, 25)
    assert (outcome.lost, outcome.duplicated, outcome.misattributed) == (0, 0, 0)
    assert outcome.ok
    checks = {
        c.name: c.passed for c in verdict(Figures(requests=32), outcome.as_dict(), OBJECTIVES)
    }
    assert checks["lost"] and checks["duplicated"]


async def test_writer_that_acks_before_commit_is_caught_as_lost(
    client: TestClient[Any, Any],
    settings: Settings,
    redis: Any,
    writer_factory: Any,
) -> None:
    writer = await writer_factory(AcksBeforeCommit)
    survivors = [await submit(client, body) for body in people(10, seed=41)]
    await drain(writer, redis, settings)
    doomed = [await submit(client, body) for body in people(8, seed=42)]
    assert all(a.s == 202 for a in survivors + doomed)
    writer.crash = True
    with pytest.raises(ConnectionError):
        await writer.step()
    assert int(await redis.xlen(settings.stream_key(0))) == 0  # "drained", yet never stored

    outcome = await reconcile(settings.database_url, survivors + doomed)

    assert outcome.lost == 8
    assert set(outcome.lost_examples) <= {a.rid for a in doomed}
    assert outcome.stored == 10 and outcome.duplicated == 0
    assert not outcome.ok
    checks = {
        c.name: c.passed for c in verdict(Figures(requests=18), outcome.as_dict(), OBJECTIVES)
    }
    assert not checks["lost"]


@pytest.mark.parametrize("unique_constraint", [True, False], ids=["with-db-constraint", "without"])
async def test_append_that_skips_the_dedupe_key_is_caught_as_duplicated(
    settings: Settings,
    redis: Any,
    pg: asyncpg.Connection,
    writer_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
    unique_constraint: bool,
) -> None:
    script = load_script("append.lua")
    assert DEDUPE_CHECK in script, "append.lua changed: update the broken build of this test"
    monkeypatch.setattr(
        append_module,
        "load_script",
        lambda name: script.replace(DEDUPE_CHECK, "local record = false"),
    )
    if not unique_constraint:  # the second line of defence is broken too
        await pg.execute("ALTER TABLE registrations DROP CONSTRAINT registrations_identity_key_key")
    broken = await make_client(settings)
    try:
        body = people(1, seed=51)[0]
        others = people(5, seed=52)
        answers = [await submit(broken, b) for b in others]
        answers.append(await submit(broken, body))
        answers.append(await submit(broken, body, "retry"))
        answers.append(await submit(broken, Generator(6).respelled(body), "respelled"))
    finally:
        await broken.close()
    assert [a.s for a in answers] == [202] * 8  # every resubmission appended again
    await drain(await writer_factory(), redis, settings)

    outcome = await reconcile(settings.database_url, answers)

    assert outcome.people_with_several_ids == 1
    assert outcome.duplicated == 2
    assert outcome.lost == 0
    assert not outcome.ok
    if unique_constraint:
        assert outcome.run_dead_letter_reasons == {"duplicate_identity": 2}
    else:
        assert outcome.identity_rows_twice == 2
    checks = {c.name: c.passed for c in verdict(Figures(requests=8), outcome.as_dict(), OBJECTIVES)}
    assert not checks["duplicated"]


async def test_stored_row_of_another_person_is_caught_as_misattributed(
    client: TestClient[Any, Any],
    settings: Settings,
    redis: Any,
    pg: asyncpg.Connection,
    writer_factory: Any,
) -> None:
    first, second = [await submit(client, body) for body in people(2, seed=61)]
    await drain(await writer_factory(), redis, settings)
    # A writer that mixed up the rows of one batch: the ids are swapped between people.
    swap = "UPDATE registrations SET registration_id = $2 WHERE registration_id = $1"
    await pg.execute(swap, first.rid, "swapping")
    await pg.execute(swap, second.rid, first.rid)
    await pg.execute(swap, "swapping", second.rid)

    outcome = await reconcile(settings.database_url, [first, second])

    assert outcome.misattributed == 2
    assert (outcome.lost, outcome.duplicated) == (0, 0)
    assert not outcome.ok


def test_answer_files_skip_a_torn_last_line_and_labels_match_stored_rows(tmp_path: Path) -> None:
    sink = AnswerFile(tmp_path / "answers-a-1.jsonl")
    sink.write(
        [Answer(1.0, 2.0, 202, "0-1-0-abcdefghjk", person_label("cccd:001090000001"), "new", "web")]
    )
    sink.close()
    with (tmp_path / "answers-b-2.jsonl").open("w") as handle:
        handle.write(
            '{"t": 1.0, "ms": 3.0, "s": 200, "rid": "0-1-0-abcdefghjk", "p": "x"}\n{"t": 2.0, "m'
        )
    found = list(read_answers(tmp_path))
    assert [a.s for a in found] == [202, 200]
    body = {"id_document": {"type": "cccd", "number": "001 090 000 001"}}
    assert person_label(identity_of(body)) == person_label("cccd:001090000001")
    assert person_label("cccd:001090000001") != person_label("cccd:001090000002")
    assert "001090000001" not in found[0].line()
