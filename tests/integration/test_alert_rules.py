"""Alerting rules and the dashboard: every expression parses, every metric it names is exported,
every alert fires and stays quiet where its promtool tests say (infra/prometheus/tests/)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY

from tests.conftest import unavailable
from tests.integration.conftest import AppFactory
from tests.integration.test_http_files import post

INFRA = Path(__file__).resolve().parents[2] / "infra"
RULE = INFRA / "kustomize" / "base" / "prometheusrule.yaml"
PLAIN = INFRA / "prometheus" / "filewallball-rules.yml"
PROMTOOL_TESTS = sorted((INFRA / "prometheus" / "tests").glob("*.yml"))
DASHBOARD = INFRA / "grafana" / "filewallball-dashboard.json"
MONITORING_DOC = INFRA.parent / "docs" / "monitoring.md"
_OURS = re.compile(r"\b((?:filewallball|http)_[a-z_]+)\b")
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}
# The scrape jobs the rules select (docs/monitoring.md): the api's, and any FileWallBall target's.
API_JOB = 'job=~"(.+/)?filewallball(-api)?"'
ANY_JOB = 'job=~"(.+/)?filewallball(-.+)?"'


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULE.read_text())["spec"]["groups"]
    return [rule for group in groups for rule in group["rules"]]


def rule_expressions() -> list[str]:
    return [rule["expr"] for rule in rules()]


def dashboard_expressions() -> list[str]:
    """Every `expr` in the dashboard, however deep (panels in rows, templating queries)."""

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    yield value
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    return list(walk(json.loads(DASHBOARD.read_text())))


def exported_names() -> set[str]:
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ()))
    return names


def test_plain_rules_file_equals_the_prometheus_rule() -> None:
    assert (
        yaml.safe_load(PLAIN.read_text())["groups"]
        == yaml.safe_load(RULE.read_text())["spec"]["groups"]
    )


def test_every_expression_parses() -> None:
    expressions = rule_expressions() + dashboard_expressions()
    assert len(expressions) > 20
    for expression in expressions:
        promql_parser.parse(expression)  # raises on a syntax error


def test_rules_select_by_metric_name_and_job_not_by_the_operators_labels() -> None:
    """A plain Prometheus with static targets has no `service` label; namespaces stay apart."""
    for rule in rules():
        expr = rule["expr"]
        assert not re.search(r"\bservice\s*=", expr), rule["alert"]
        for matcher in re.findall(r'\bjob\s*=~?\s*"[^"]*"', expr):
            assert matcher in (API_JOB, ANY_JOB), (rule["alert"], matcher)
        if re.search(r"\b(?:up|http_[a-z_]+)\{", expr):  # generic names: also the scrape job
            assert API_JOB in expr, rule["alert"]
        for grouping in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            labels = [label.strip() for label in grouping.split(",")]
            assert "namespace" in labels, (rule["alert"], grouping)


def test_job_metrics_are_read_by_their_task_label() -> None:
    """`job` is the scrape job's: the job metrics name the background job `task`."""
    named = [rule for rule in rules() if "filewallball_job_" in rule["expr"]]
    assert named
    for rule in named:
        assert "task" in rule["expr"] and not re.search(r"\bjob\b", rule["expr"]), rule["alert"]
        assert "$labels.job" not in json.dumps(rule["annotations"]), rule["alert"]


def test_every_alert_has_a_firing_and_a_quiet_promtool_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in PROMTOOL_TESTS:
        suite = yaml.safe_load(path.read_text())
        assert suite["rule_files"] == ["../filewallball-rules.yml"], path.name
        for case in suite["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in rules()}
    assert alerts - firing == set(), "alerts without a promtool case where they fire"
    assert alerts - quiet == set(), "alerts without a promtool case where they stay quiet"
    assert (firing | quiet) - alerts == set(), "promtool cases of alerts that do not exist"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        unavailable("promtool is not installed (Debian: apt-get install prometheus; .ci/run does)")
    assert path is not None
    return path


def _promtool(promtool: str, *args: str) -> None:
    result = subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_both_rule_files(promtool: str, tmp_path: Path) -> None:
    spec = tmp_path / "prometheusrule-spec.yml"
    spec.write_text(yaml.safe_dump(yaml.safe_load(RULE.read_text())["spec"]))
    for path in (PLAIN, spec):
        _promtool(promtool, "check", "rules", str(path))


@pytest.mark.parametrize("suite", PROMTOOL_TESTS, ids=lambda path: path.stem)
def test_promtool_rule_tests_pass(promtool: str, suite: Path) -> None:
    _promtool(promtool, "test", "rules", str(suite))


def test_the_documented_scrape_config_is_valid_and_names_the_api_job(
    promtool: str, tmp_path: Path
) -> None:
    """docs/monitoring.md's prometheus.yml, next to the rules and a key file, as a user has it."""
    block = re.search(r"```yaml\n(# prometheus.yml\n.*?)```", MONITORING_DOC.read_text(), re.S)
    assert block, "docs/monitoring.md has no prometheus.yml example"
    config = tmp_path / "prometheus.yml"
    config.write_text(block[1])
    shutil.copy(PLAIN, tmp_path / "filewallball-rules.yml")
    (tmp_path / "filewallball-metrics.key").write_text("fwb_example0000_" + "A" * 43)
    _promtool(promtool, "check", "config", str(config))
    api = re.compile(API_JOB.removeprefix('job=~"').removesuffix('"'))
    jobs = [job["job_name"] for job in yaml.safe_load(block[1])["scrape_configs"]]
    assert jobs and all(api.fullmatch(job) for job in jobs), jobs


async def _exported_after_use(make_client: AppFactory) -> set[str]:
    async with make_client() as client:  # builds the app: every metric is registered
        await post(client, b"x")
    return exported_names()


async def test_every_metric_the_rules_name_is_exported(make_client: AppFactory) -> None:
    exported = await _exported_after_use(make_client)
    named = {m for e in rule_expressions() for m in _OURS.findall(e)}
    assert sorted(named - exported) == [], "named in the rules but not exported"
    alerts = {rule["alert"] for rule in rules()}
    for needed in (
        "ApiAbsent",
        "ApiDown",
        "HighCpu",
        "HighMemory",
        "BlobVolumeLow",
        "HighErrorRate",
        "UploadFailures",
        "MalwareDetected",
        "DependencyDown",
        "SlowTransfers",
        "JobsFailing",
    ):
        assert f"FileWallBall{needed}" in alerts


async def test_every_metric_the_dashboard_names_is_exported(make_client: AppFactory) -> None:
    exported = await _exported_after_use(make_client)
    named = {m for e in dashboard_expressions() for m in _OURS.findall(e)}
    assert named, "no metric found in the dashboard's queries"
    assert sorted(named - exported) == [], "named in the dashboard but not exported"
