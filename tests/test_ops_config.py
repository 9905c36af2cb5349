"""ops/: the alert rules, the Grafana dashboard, the scrape config and the compose file
are checked against what /metrics actually exports (a rule on a misspelt metric never
fires), and with promtool where it is installed."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway import devstack
from gateway.settings import Settings
from gateway.writer import run_writer
from tests.conftest import wait_for
from tests.helpers import valid_body

OPS = Path(__file__).resolve().parent.parent / "ops"
ROOT = OPS.parent
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "le",
}
PROMETHEUS_OWN = {"up", "ALERTS", "scrape_duration_seconds"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (no full parser: strings, label
    matchers, ranges, grouping clauses and function calls are removed first)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end() :].lstrip()[:1]
        word = match.group(0)
        if following == "(" or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def exported(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + s for s in SUFFIXES.get(family.type, ()))
        names.update(s.name for s in family.samples)
    return names


@pytest.fixture
async def exported_names(settings: Settings, client: Any) -> set[str]:
    """Every metric name the gateway and the writer export, after some traffic."""
    headers = {"Content-Type": "application/json", "X-Channel": "web"}
    for seed in range(3):
        await client.post(
            "/v1/registrations", data=orjson.dumps(valid_body(300 + seed)), headers=headers
        )
    gateway_text = await (await client.get("/metrics")).text()
    port = devstack.free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(run_writer(settings.with_changes(writer_metrics_port=port), stop))
    try:
        async with aiohttp.ClientSession() as session:

            async def scraped() -> str | None:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                        return await response.text()
                except aiohttp.ClientConnectionError:
                    return None

            writer_text = await wait_for(scraped, timeout=30, interval=0.2)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    return exported(gateway_text) | exported(writer_text)


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((OPS / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return dict(json.loads((OPS / "grafana" / "dashboards" / "intake-queue.json").read_text()))


def test_metric_name_extraction_ignores_functions_labels_and_ranges() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, route) (rate(gateway_http_request_seconds_bucket"
        '{route="/v1/registrations", status=~"5.."}[5m]))) > on(instance) group_left up'
    )
    assert metric_names(expr) == {"gateway_http_request_seconds_bucket", "up"}


async def test_every_alert_and_dashboard_expression_reads_exported_metrics(
    exported_names: set[str],
) -> None:
    known = exported_names | PROMETHEUS_OWN
    for name in (
        "gateway_queue_backlog",
        "gateway_queue_oldest_age_seconds",
        "gateway_writers_alive",
        "gateway_dead_letters",
        "writer_rows_total",
        "writer_commit_seconds_bucket",
        "gateway_shed_total",
        "gateway_dependency_up",
    ):
        assert name in exported_names, name
    expressions = [("alert " + r["alert"], r["expr"]) for r in alert_rules()]
    for panel in dashboard()["panels"]:
        expressions += [(f"panel {panel['title']}", t["expr"]) for t in panel["targets"]]
    unknown = {(where, name) for where, expr in expressions for name in metric_names(expr) - known}
    assert not unknown, f"expressions read metrics that nothing exports: {sorted(unknown)}"


def test_alert_rules_cover_the_operator_questions_and_link_their_runbook() -> None:
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    assert {
        "IntakeBacklogHigh",
        "IntakeOldestRegistrationOld",
        "IntakeWritersDown",
        "IntakeDeadLettersRising",
        "IntakeShedding",
    } <= names
    runbook = (OPS / "README.md").read_text()
    anchors = {h.strip().lower() for h in re.findall(r"^### (.+)$", runbook, flags=re.MULTILINE)}
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        target = rule["annotations"]["runbook"]
        assert target.startswith("ops/README.md#") and target.split("#")[1] in anchors, rule[
            "alert"
        ]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]


def test_rules_and_scrape_config_pass_promtool_when_it_is_installed(tmp_path: Path) -> None:
    config = yaml.safe_load((OPS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["gateway"]["dns_sd_configs"][0]["port"] == 8080
    assert jobs["writer"]["dns_sd_configs"][0]["port"] == Settings().writer_metrics_port
    promtool = shutil.which("promtool")
    if promtool is None:
        return  # the checks above and the metric-name test still ran
    shutil.copy(OPS / "alerts.yml", tmp_path / "alerts.yml")
    config["rule_files"] = [str(tmp_path / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    for args in (
        ["check", "rules", str(tmp_path / "alerts.yml")],
        ["check", "config", str(tmp_path / "prometheus.yml")],
    ):
        done = subprocess.run(
            [promtool, *args], check=False, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_is_provisioned_against_the_prometheus_datasource() -> None:
    board = dashboard()
    datasources = yaml.safe_load(
        (OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    uid = datasources["datasources"][0]["uid"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and board["uid"]
    titles = " ".join(p["title"].lower() for p in board["panels"])
    for topic in (
        "backlog",
        "oldest",
        "drain",
        "writers",
        "dead letters",
        "shed",
        "commit latency",
        "batch size",
        "status",
        "dependencies",
    ):
        assert topic in titles, topic
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == uid
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel[
            "gridPos"
        ]["w"] <= 24
        assert panel["targets"] and all(t["expr"] for t in panel["targets"])
    provider = yaml.safe_load(
        (OPS / "grafana" / "provisioning" / "dashboards" / "intake.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_compose_runs_the_whole_stack_with_a_safe_redis() -> None:
    compose = yaml.safe_load((OPS / "compose.yaml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "migrate", "gateway", "writer", "prometheus", "grafana"} <= set(
        services
    )
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command and "--maxmemory-policy noeviction" in redis_command
    gateway_env = services["gateway"]["environment"]
    assert gateway_env["GATEWAY_MODE"] == "production"  # refuses an unsafe Redis
    assert services["writer"]["environment"]["GATEWAY_WRITER_METRICS_PORT"] == str(
        Settings().writer_metrics_port
    )
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (OPS / source).exists(), source
    dockerfile = services["gateway"]["build"]["dockerfile"]
    assert (ROOT / dockerfile).is_file()


def test_package_data_ships_the_ops_page() -> None:
    """The image installs the package (not a checkout): its static files must be
    package data, or /ops answers 500 in production."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["gateway"]
    static = [p.relative_to(ROOT / "gateway") for p in (ROOT / "gateway" / "static").iterdir()]
    missing = [str(p) for p in static if not any(p.match(pattern) for pattern in patterns)]
    assert not missing, (
        f'add "static/*" to [tool.setuptools.package-data] gateway in pyproject.toml: {missing}'
    )
