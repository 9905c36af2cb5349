"""Locust users that behave like the portal's two front ends.

Run through ``loadtests/run.py`` (which sets everything up); by hand:
``.venv-locust/bin/locust -f loadtests/locustfile.py --headless --host URL``
with ``LOADTEST_SHAPE=surge|spike|soak|breakpoint`` choosing the load shape.

* ``WebUser`` (the web site) and ``AppUser`` (the phone app) send realistic
  registrations from :class:`gateway.datagen.Generator`: mostly new people, plus the
  configured shares of later client retries, respelled resubmissions, same-person
  conflicts and invalid forms (``--retry-share`` ...). A share of new submissions is
  fired twice at once (``--inflight-share``): the retry leaves before the first answer.
* A 503/429 is retried after its ``Retry-After``; a request with no answer within the
  user's patience (``--give-up-s``, ``--web-give-up-s``) is abandoned and the same
  submission, same ``Idempotency-Key``, is sent again, up to ``--resubmits`` times.
  ``ImpatientAppUser`` (``--impatient-share`` of users) gives up after
  ``--impatient-give-up-s``, on a flaky mobile network, long before the server would fail.
* Every answer is recorded (:mod:`loadtests.answers`) for reconciliation. Workers send
  theirs to the master, so a distributed run ends with every answer on the master.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, between, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.datagen import Generator, Submission
from loadtests import shapes
from loadtests.answers import Answer, AnswerFile, person_label

ROUTE = "/v1/registrations"
MAX_PROCESSES = 256  # generator streams: each Locust process issues disjoint documents
MESSAGE_ANSWERS = "loadtest_answers"
MESSAGE_DONE = "loadtest_answers_done"
GAVE_UP = shapes.GAVE_UP
EXPECTED = {"conflict": (409,), "respelled": (200,), "retry": (200,)}

# One shape, chosen by name before Locust looks for shape classes in this module.
LoadShape = shapes.SHAPES[os.environ.get("LOADTEST_SHAPE", "surge")]


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("intake load test")
    add = group.add_argument
    add("--answers-dir", default="loadtests/results/adhoc", help="where answers-*.jsonl go")
    add("--seed", type=int, default=0, help="data generator seed (0: from the clock)")
    add("--retry-share", type=float, default=0.05, help="later exact retries")
    add("--inflight-share", type=float, default=0.03, help="new submissions sent twice at once")
    add("--respell-share", type=float, default=0.03, help="same person, other spelling")
    add("--conflict-share", type=float, default=0.02, help="same document, other content")
    add("--invalid-share", type=float, default=0.03, help="forms with one defect")
    add("--web-share", type=float, default=0.55, help="share of users on the web site")
    add("--impatient-share", type=float, default=0.02, help="share of users on flaky networks")
    add("--think-s", type=float, default=1.0, help="mean pause between a user's submissions")
    add("--give-up-s", type=float, default=10.0, help="app users' patience")
    add("--web-give-up-s", type=float, default=30.0, help="browser users' patience")
    add("--impatient-give-up-s", type=float, default=0.5, help="flaky-network users' patience")
    add("--resubmits", type=int, default=3, help="sends of one submission at most")
    add("--max-retry-after-s", type=float, default=10.0, help="cap on an honoured Retry-After")
    shapes.add_shape_options(group)


class Process:
    """Per-process state shared by this process's users (gevent: one thread)."""

    def __init__(self) -> None:
        self.generator: Iterator[Submission] | None = None
        self.accepted: set[str] = set()  # person labels with a 200/202 in this process
        self.pending: list[str] = []
        self.sink: AnswerFile | None = None
        self.done_from: set[str] = set()
        self.expected_workers: set[str] = set()

    def submissions(self, env: Environment) -> Iterator[Submission]:
        if self.generator is None:
            opts = env.parsed_options
            index = getattr(env.runner, "worker_index", 0) % MAX_PROCESSES
            seed = (opts.seed or int(time.time())) * 1000 + index
            self.generator = Generator(seed, stream=index, streams=MAX_PROCESSES).submissions(
                10**12,
                retry_share=opts.retry_share,
                respell_share=opts.respell_share,
                conflict_share=opts.conflict_share,
                invalid_share=opts.invalid_share,
            )
        return self.generator

    def record(self, env: Environment, answer: Answer) -> None:
        if answer.accepted:
            self.accepted.add(answer.p)
        self.pending.append(answer.line())
        if len(self.pending) >= 2000:
            self.flush(env)

    def flush(self, env: Environment) -> None:
        lines, self.pending = self.pending, []
        if not lines:
            return
        if isinstance(env.runner, WorkerRunner):
            env.runner.send_message(MESSAGE_ANSWERS, lines)
        else:
            self.open_sink(env).write_lines(lines)

    def open_sink(self, env: Environment) -> AnswerFile:
        if self.sink is None:
            role = "master" if isinstance(env.runner, MasterRunner) else socket.gethostname()
            name = f"answers-{role}-{os.getpid()}.jsonl"
            self.sink = AnswerFile(Path(env.parsed_options.answers_dir) / name)
        return self.sink


PROCESS = Process()


class _Person(FastHttpUser):
    abstract = True
    wait_time = between(0.5, 1.5)
    concurrency = 4  # connections per user: an in-flight retry needs a second one
    channel = "web"  # the front end: X-Channel and the body's channel
    gives_up_by_choice = False

    @task
    def register(self) -> None:
        env = self.environment
        sub = next(PROCESS.submissions(env))
        inflight = sub.kind == "new" and random.random() < env.parsed_options.inflight_share
        twin = gevent.spawn(self._submit, sub, "inflight", True) if inflight else None
        self._submit(sub, "", inflight)
        if twin is not None:
            twin.join()

    def _submit(self, sub: Submission, flags: str, paired: bool) -> None:
        """Send one submission until it has a final answer or the user gives up;
        ``paired``: a twin of it is in flight, so either may be answered 200."""
        opts = self.environment.parsed_options
        label = person_label(sub.identity)
        # Judged strictly only when the original was accepted before this send.
        original_accepted = label in PROCESS.accepted
        # Whoever sends it, through their own front end: a person may retry on the app
        # what they first sent from the web; the channel is not part of the content.
        body = sub.body if isinstance(sub.body, bytes) else {**sub.body, "channel": self.channel}
        data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", "X-Channel": self.channel}
        if sub.idempotency_key:
            headers["Idempotency-Key"] = sub.idempotency_key
        if random.random() < 0.3:
            headers["Accept-Language"] = "vi"
        attempts = max(opts.resubmits, 1)
        for attempt in range(1, attempts + 1):
            # A resubmission may meet its own earlier, unanswered append: a 200.
            expect = Expect(sub.kind, original_accepted, paired or attempt > 1)
            status, retry_after = self._send(sub, data, headers, label, expect, attempt, flags)
            if status not in (0, 429) and status < 500 or attempt == attempts:
                return
            pause = (
                min(retry_after, opts.max_retry_after_s) if retry_after else random.uniform(1, 3)
            )
            gevent.sleep(pause * random.uniform(0.8, 1.2))

    def _send(
        self,
        sub: Submission,
        data: bytes,
        headers: dict[str, str],
        label: str,
        expect: Expect,
        attempt: int,
        flags: str,
    ) -> tuple[int, float]:
        name = f"POST {ROUTE} ({sub.kind})"
        started = time.time()
        clock = time.perf_counter()
        with self.client.post(
            ROUTE, data=data, headers=headers, name=name, catch_response=True
        ) as resp:
            elapsed_ms = (time.perf_counter() - clock) * 1000
            status = int(resp.status_code or 0)
            rid, retry_after, flag = "", 0.0, [flags]
            if status == 0:
                if _timed_out(resp.error):
                    flag += ["timeout", "gaveup" if self.gives_up_by_choice else ""]
                if "gaveup" in flag:
                    # Kept apart in Locust's statistics: not the server's failure.
                    resp.request_meta["name"] = f"{name} {GAVE_UP}"
                resp.failure(f"no answer: {type(resp.error).__name__}")
            else:
                try:
                    body = json.loads(resp.content or b"{}")
                except ValueError:
                    body = {}
                rid = str(body.get("registration_id") or "") if isinstance(body, dict) else ""
                retry_after = _seconds(resp.headers.get("Retry-After") if resp.headers else None)
                problem = expect.problem(status)
                if problem:
                    resp.failure(problem)
                    if status < 500 and status != 429:
                        flag.append("unexpected")
                else:
                    resp.success()
        answer = Answer(
            started,
            elapsed_ms,
            status,
            rid,
            label,
            sub.kind,
            self.channel,
            attempt,
            ",".join(f for f in flag if f),
        )
        PROCESS.record(self.environment, answer)
        return status, retry_after


@dataclass(frozen=True, slots=True)
class Expect:
    """What a correct gateway may answer to one send of a submission."""

    kind: str
    original_accepted: bool  # retry/respelled/conflict: the original had its 202/200
    may_replay: bool  # this very submission may already be appended (twin, resubmission)

    def problem(self, status: int) -> str:
        """Why ``status`` does not fit ("" when it does)."""
        if status >= 500 or status == 429:
            return f"server answered {status}"
        if self.kind == "invalid":
            fits = status in (400, 422)
        elif self.kind == "new":
            fits = status == 202 or (self.may_replay and status == 200)
        else:
            fits = status in EXPECTED[self.kind] or (self.may_replay and status == 200)
            # An original still in flight or shed: this submission is the first one.
            fits = fits or (not self.original_accepted and status == 202)
        return "" if fits else f"unexpected {status} for a {self.kind} submission"


def _timed_out(error: BaseException | None) -> bool:
    # geventhttpclient wraps the socket timeout in RetriesExceeded(original=...).
    inner = getattr(error, "original", None) or error
    return isinstance(inner, (socket.timeout, TimeoutError, gevent.Timeout)) or (
        "timed out" in str(inner).lower()
    )


def _seconds(value: str | None) -> float:
    try:
        return max(float(value), 0.0) if value else 0.0
    except ValueError:
        return 0.0


class WebUser(_Person):
    channel = "web"


class AppUser(_Person):
    channel = "app"


class ImpatientAppUser(_Person):
    channel = "app"
    gives_up_by_choice = True


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    opts = environment.parsed_options
    runner = environment.runner
    if opts is None or runner is None:
        return
    if isinstance(runner, MasterRunner):
        runner.register_message(MESSAGE_ANSWERS, _on_answers)
        runner.register_message(MESSAGE_DONE, _on_done)
    _apply_options(environment)


def _apply_options(environment: Environment) -> None:
    opts = environment.parsed_options
    impatient = min(max(opts.impatient_share, 0.0), 1.0)
    web = min(max(opts.web_share, 0.0), 1.0) * (1 - impatient)
    weights = {WebUser: web, AppUser: (1 - impatient) - web, ImpatientAppUser: impatient}
    for cls, share in weights.items():
        cls.weight = max(round(share * 1000), 0)
    environment.user_classes = [cls for cls in weights if cls.weight > 0]
    WebUser.network_timeout = WebUser.connection_timeout = opts.web_give_up_s
    AppUser.network_timeout = AppUser.connection_timeout = opts.give_up_s
    ImpatientAppUser.network_timeout = opts.impatient_give_up_s
    ImpatientAppUser.connection_timeout = max(opts.impatient_give_up_s, 1.0)
    think = max(opts.think_s, 0.0)
    wait = between(think * 0.5, think * 1.5)
    for cls in (WebUser, AppUser, ImpatientAppUser):
        cls.wait_time = wait  # type: ignore[method-assign]


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    # Workers learn the master's options with the first spawn message, just before this.
    _apply_options(environment)
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        PROCESS.expected_workers = set(runner.clients.keys())
    elif environment.parsed_options is not None:
        if not isinstance(runner, WorkerRunner):
            PROCESS.open_sink(environment)
        gevent.spawn(_flush_every_second, environment)


def _flush_every_second(environment: Environment) -> None:
    while True:
        gevent.sleep(1.0)
        PROCESS.flush(environment)


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    PROCESS.flush(environment)
    if isinstance(runner, WorkerRunner):
        # Sent before the worker reports "stopped": the master has every answer by then.
        runner.send_message(MESSAGE_DONE, {"answers": True})
    elif isinstance(runner, MasterRunner):
        deadline = time.monotonic() + 15
        while PROCESS.expected_workers - PROCESS.done_from and time.monotonic() < deadline:
            gevent.sleep(0.2)


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_: Any) -> None:
    PROCESS.flush(environment)
    if PROCESS.sink is not None:
        PROCESS.sink.close()


def _on_answers(environment: Environment, msg: Any, **_: Any) -> None:
    PROCESS.open_sink(environment).write_lines(msg.data)


def _on_done(environment: Environment, msg: Any, **_: Any) -> None:
    PROCESS.done_from.add(msg.node_id)
