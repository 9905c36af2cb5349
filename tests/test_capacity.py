"""Capacity figures: the ``gateway capacity`` calculator, and how a run's capacity is
measured (the breakpoint's last good step, the best window within the objectives)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.capacity import GIB, REFERENCE, Measured, Target, load_measured, plan
from gateway.cli import main
from gateway.exceptions import ConfigurationError
from loadtests import plan as load_plan
from loadtests.answers import Answer
from loadtests.figures import compute, series, sustainable_rate

FIGURES = Measured(
    gateway_cpu_s_per_request=0.001,  # 1,000 requests/s per core
    redis_cpu_s_per_request=0.0001,  # 10,000 requests/s per shard
    writer_cpu_s_per_row=0.0005,  # 2,000 rows/s per writer, flat out
    postgres_cpu_s_per_row=0.0004,
    stream_bytes_per_entry=1000.0,
    dedupe_bytes_per_person=200.0,
    new_share=0.5,
    source="test",
)


def test_processes_follow_the_peak_and_the_headroom() -> None:
    result = plan(Target(peak_rps=10_000, hours=1, utilisation=0.5), FIGURES)
    assert result.gateway_processes == 20  # 10,000 / (1,000 * 0.5)
    assert result.registrations_per_s == 5_000
    assert result.writer_processes == 5  # 5,000 / (2,000 * 0.5)
    assert result.redis_shards_for_cpu == 2
    assert result.peak_backlog == 0 and result.time_to_drain_s == 0
    doubled = plan(Target(peak_rps=20_000, hours=1, utilisation=0.5), FIGURES)
    assert doubled.gateway_processes == 40


def test_too_few_writers_build_a_backlog_that_drains_after_the_peak() -> None:
    result = plan(Target(peak_rps=10_000, hours=2, writers=1), FIGURES)
    # 5,000 new/s arrive, one writer commits 2,000/s: 3,000/s pile up for 7,200 s.
    assert result.peak_backlog == 3_000 * 7_200
    assert result.drain_rate_per_s == 2_000
    assert result.time_to_drain_s == pytest.approx(3_000 * 7_200 / 2_000)
    assert result.backlog_memory_gib == pytest.approx(3_000 * 7_200 * 1000 / GIB, abs=0.01)


def test_redis_memory_holds_a_dedupe_key_per_person_and_sets_the_shard_count() -> None:
    result = plan(Target(peak_rps=55_000, hours=3, redis_shard_gib=10), FIGURES)
    people = 27_500 * 3 * 3600
    assert result.registrations_total == people
    assert result.dedupe_memory_gib == pytest.approx(people * 200 / GIB, abs=0.01)
    assert result.redis_shards_for_memory == math.ceil(people * 200 / (10 * GIB))
    assert result.redis_shards == max(result.redis_shards_for_cpu, result.redis_shards_for_memory)


def test_nonsense_targets_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        plan(Target(peak_rps=0, hours=3), FIGURES)
    with pytest.raises(ConfigurationError):
        plan(Target(peak_rps=100, hours=3, utilisation=1.5), FIGURES)


def test_measured_figures_come_from_a_run_report_with_fallbacks(tmp_path: Path) -> None:
    report = tmp_path / "capacity.json"
    report.write_text(
        json.dumps(
            {
                "figures": {
                    "requests": 1000,
                    "accepted": 800,
                    "cpu_s_per_request": {"gateway": 0.002, "redis": 0.0002},
                    "cpu_s_per_row": {"writer": 0.0007, "postgres": None},
                    "stream_bytes_per_entry": 1500,
                    "dedupe_bytes_per_person": None,
                }
            }
        )
    )
    measured = load_measured(report)
    assert measured.gateway_cpu_s_per_request == 0.002
    assert measured.writer_cpu_s_per_row == 0.0007
    assert measured.new_share == 0.8
    assert measured.postgres_cpu_s_per_row == REFERENCE.postgres_cpu_s_per_row
    assert measured.dedupe_bytes_per_person == REFERENCE.dedupe_bytes_per_person
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigurationError):
        load_measured(tmp_path / "bad.json")


def test_capacity_command_plans_the_launch_day_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capacity", "--peak-rps", "55000", "--hours", "3", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = plan(Target(peak_rps=55_000, hours=3), REFERENCE)
    assert printed["plan"]["gateway_processes"] == expected.gateway_processes
    assert printed["plan"]["redis_memory_gib"] == expected.redis_memory_gib
    assert main(["capacity", "--peak-rps", "55000", "--hours", "3", "--writers", "4"]) == 0
    text = capsys.readouterr().out
    assert "gateway processes" in text and "time to drain" in text
    slow = plan(Target(peak_rps=55_000, hours=3, writers=4), REFERENCE)
    assert slow.peak_backlog > 0 and f"{slow.peak_backlog:,}" in text


def test_cpu_override_changes_the_process_count() -> None:
    cheaper = replace(FIGURES, gateway_cpu_s_per_request=0.0005)
    assert plan(Target(10_000, 1, 0.5), cheaper).gateway_processes == 10


# --- measured capacity of a run ------------------------------------------------------


def _step(index: int, users: int, p99: float, errors: int = 0) -> load_plan.StepResult:
    return load_plan.judge_step(
        index=index,
        users=users,
        window=(0.0, 10.0),
        requests=1000,
        errors=errors,
        histogram={10: 980, int(p99): 20},
        generator_cpu=10.0,
        objectives=load_plan.Objectives(p99_ms=500, max_error_rate=0.001),
    )


def test_breakpoint_capacity_is_the_last_step_before_a_confirmed_break() -> None:
    steps = [_step(0, 10, 50), _step(1, 20, 90), _step(2, 30, 900), _step(3, 30, 950)]
    assert [s.ok for s in steps] == [True, True, False, False]
    assert steps[2].broke == ["p99 900 ms > 500 ms"]
    good = load_plan.last_good(steps)
    assert good is not None and good.users == 20 and good.rps == 100


def test_one_noisy_step_does_not_end_the_breakpoint() -> None:
    steps = [
        _step(0, 10, 50),
        _step(1, 20, 900),
        _step(2, 20, 80),
        _step(3, 30, 70),
        _step(4, 40, 50, errors=5),
        _step(5, 40, 60, errors=9),
    ]
    good = load_plan.last_good(steps)
    assert good is not None and good.users == 30
    assert load_plan.last_good([_step(0, 10, 900), _step(1, 10, 900)]) is None


def test_breakpoint_staircase_and_surge_shape_follow_the_options() -> None:
    opts = load_plan.PlanOptions(peak_users=100, step_s=20)
    stairs = load_plan.breakpoint_steps(opts)
    assert [s.users for s in stairs[:3]] == [20, 40, 60] and stairs[-1].users == 600
    surge = load_plan.surge(opts)
    assert surge[0].users == 3 and max(s.users for s in surge) == 120
    opening = surge[1]
    assert opening.users == 100 and opening.spawn_rate >= 100 / 4  # idle to peak in seconds
    short = load_plan.surge(replace(opts, time_scale=0.17))
    assert load_plan.duration_s(short) < 30
    with pytest.raises(ValueError):
        load_plan.stages_for("tsunami", opts)


def test_sustainable_rate_is_the_best_window_within_the_objectives() -> None:
    answers = []
    for second in range(30):
        slow = second >= 20  # the last 10 s are fast-paced but miss the latency objective
        for i in range(50 if slow else 20):
            answers.append(
                Answer(
                    1000.0 + second + i / 100,
                    900.0 if slow else 20.0,
                    202,
                    f"0-{second}-{i}-abcdefghjk",
                    f"p{second}-{i}",
                    "new",
                    "web",
                )
            )
    rate, requests = sustainable_rate(series(answers, t0=1000.0), load_plan.Objectives(p99_ms=500))
    assert rate == pytest.approx(20.0, abs=1.0)
    assert requests == pytest.approx(rate)


def test_cpu_per_request_is_the_marginal_cost_not_the_idle_overhead() -> None:
    # 80 s at four load levels; the gateway burns 0.3 CPU-s/s idle plus 2 ms a request.
    levels = [10] * 20 + [100] * 20 + [40] * 20 + [150] * 20
    answers = [
        Answer(
            1000.0 + second + i / (rate + 1),
            5.0,
            202,
            f"0-{second}-{i}-abcdefghjk",
            "p",
            "new",
            "web",
        )
        for second, rate in enumerate(levels)
        for i in range(rate)
    ]
    samples, cpu, rows = [], 0.0, 0.0
    for second in range(len(levels) + 1):
        samples.append(
            {
                "t": 1000.0 + second,
                "backlog": 0.0,
                "pending": 0.0,
                "stream_bytes": 0.0,
                "used_memory": 0.0,
                "drained": rows,
                "keys": 0.0,
                "cpu_gateway": cpu,
                "cpu_writer": rows * 0.0005 + second * 0.05,
                "cpu_redis": cpu / 10,
                "cpu_postgres": rows * 0.0003,
                "cpu_locust": cpu / 2,
            }
        )
        if second < len(levels):
            cpu += 0.3 + levels[second] * 0.002
            rows += levels[second]
    figures = compute(answers, samples, load_plan.Objectives())
    assert figures.cpu_method.startswith("marginal")
    assert figures.cpu_s_per_request["gateway"] == pytest.approx(0.002, rel=0.05)
    assert figures.cpu_s_per_row["writer"] == pytest.approx(0.0005, rel=0.05)
    average = (samples[-1]["cpu_gateway"] - samples[0]["cpu_gateway"]) / len(answers)
    assert average > 0.0025  # the average would have charged the idle time to requests
