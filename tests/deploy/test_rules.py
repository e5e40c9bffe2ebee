"""Alert rules and autoscaling queries: valid PromQL on metrics the gateway really exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest

from server import metrics
from tests.deploy.conftest import K8S, find, promtool

HERE = Path(__file__).parent
METRIC = re.compile(r"\bcocktail_[a-z_]+\b")


def exported_names() -> set[str]:
    """Every sample name the gateway's /metrics shows (labels created as at start)."""
    metrics.init_labels()
    text = generate_latest(REGISTRY).decode()
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and line[0] != "#"
    }


def promtool_run(*args: str | Path) -> None:
    result = subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def adapter_queries() -> list[str]:
    """prometheus-adapter's metricsQuery templates, filled in as the adapter does for a pod list."""
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    out = []
    for rule in values["rules"]["custom"]:
        series = re.fullmatch(r"(\w+)\{.*\}", rule["seriesQuery"]).group(1)  # type: ignore[union-attr]
        assert re.fullmatch(rule["name"]["matches"], series)
        out.append(
            rule["metricsQuery"]
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", 'namespace="cocktail",pod=~"a|b"')
            .replace("<<.GroupBy>>", "pod")
        )
    return out


@pytest.fixture
def rules_file(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> Path:
    rule = find(rendered["gpu"], "PrometheusRule")
    path = tmp_path / "cocktail-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def test_alert_rules_pass_promtool_check(rules_file: Path) -> None:
    promtool_run("check", "rules", rules_file)
    alerts = [
        r["alert"] for g in yaml.safe_load(rules_file.read_text())["groups"] for r in g["rules"]
    ]
    assert alerts == [
        "CocktailQueueGrowing",
        "CocktailSwapRateHigh",
        "CocktailScoringSlow",
        "CocktailErrorRateHigh",
        "CocktailReplicaNotReady",
    ]


def test_alerts_fire_on_the_right_series(rules_file: Path) -> None:
    shutil.copy(HERE / "alerts_test.yaml", rules_file.parent / "alerts_test.yaml")
    promtool_run("test", "rules", rules_file.parent / "alerts_test.yaml")


def test_autoscaling_queries_are_valid_promql(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    keda = find(rendered["gpu-keda"], "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
    queries = [*adapter_queries(), keda]
    path = tmp_path / "queries.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "autoscaling",
                        "rules": [{"record": f"q{i}", "expr": q} for i, q in enumerate(queries)],
                    }
                ]
            }
        )
    )
    promtool_run("check", "rules", path)


def test_every_metric_named_in_deploy_is_exported(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    exported = exported_names()
    rules = find(rendered["gpu"], "PrometheusRule")["spec"]["groups"]
    texts = [r["expr"] for g in rules for r in g["rules"]]
    texts += adapter_queries()
    texts.append(
        find(rendered["gpu-keda"], "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
    )
    texts.append(
        find(rendered["gpu"], "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"][
            "name"
        ]
    )
    named = {m for t in texts for m in METRIC.findall(t)}
    assert named >= {
        "cocktail_queue_depth",
        "cocktail_merge_swaps_total",
        "cocktail_scoring_duration_seconds_bucket",
        "cocktail_requests_total",
        "cocktail_engine_ready",
    }
    assert named <= exported, sorted(named - exported)
