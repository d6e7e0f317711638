"""Alerting rules and the dashboard: every expression parses, every metric it names is exported."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import yaml
from prometheus_client import REGISTRY

from tests.integration.conftest import AppFactory
from tests.integration.test_http_files import post

INFRA = Path(__file__).resolve().parents[2] / "infra"
RULE = INFRA / "kustomize" / "base" / "prometheusrule.yaml"
PLAIN = INFRA / "prometheus" / "filewallball-rules.yml"
DASHBOARD = INFRA / "grafana" / "filewallball-dashboard.json"
_OURS = re.compile(r"\b((?:filewallball|http)_[a-z_]+)\b")
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}


def rule_expressions() -> list[str]:
    groups = yaml.safe_load(RULE.read_text())["spec"]["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    panels: list[dict[str, Any]] = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


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


async def test_every_metric_named_is_exported(make_client: AppFactory) -> None:
    async with make_client() as client:  # builds the app: every metric is registered
        await post(client, b"x")
        named = {m for e in rule_expressions() + dashboard_expressions() for m in _OURS.findall(e)}
    missing = sorted(named - exported_names())
    assert missing == [], f"named in rules or dashboard but not exported: {missing}"
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULE.read_text())["spec"]["groups"]
        for rule in group["rules"]
    }
    for needed in (
        "HighCpu",
        "HighMemory",
        "BlobVolumeLow",
        "HighErrorRate",
        "UploadFailures",
        "MalwareDetected",
        "DependencyDown",
        "SlowTransfers",
    ):
        assert f"FileWallBall{needed}" in alerts
