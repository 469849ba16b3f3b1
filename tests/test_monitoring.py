"""deploy/monitoring: the alert rules pass promtool's checks and their own unit tests, the dashboard's queries
are valid PromQL, and every metric either names is one the server really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

MONITORING = Path(__file__).resolve().parent.parent / "deploy" / "monitoring"
DASHBOARD = json.loads((MONITORING / "grafana-dashboard.json").read_text())
_METRIC = re.compile(r"\b((?:embedserver|process)_[a-z_]+)\b")
_SUFFIXES = ("_bucket", "_sum", "_count")


def _dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in DASHBOARD["panels"] for target in panel["targets"]]


def _alert_exprs() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return found


def test_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    promtool = _promtool()
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run([promtool, *args], cwd=MONITORING, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each query, with Grafana's variables given values, as a recording rule promtool parses."""
    promtool = _promtool()
    rules = [
        {
            "record": f"dashboard:query{i}",
            "expr": expr.replace("$__rate_interval", "5m").replace("$instance", ".*"),
        }
        for i, expr in enumerate(_dashboard_exprs())
    ]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def test_every_metric_named_is_exported(client: httpx.AsyncClient) -> None:
    await client.post("/v1/embeddings", json={"input": "observed"})  # every histogram has a sample
    exported = set()
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith("# TYPE "):
            exported.add(line.split()[2])
        elif line and not line.startswith("#"):
            exported.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    named = {name for expr in _dashboard_exprs() + _alert_exprs() for name in _METRIC.findall(expr)}
    assert len(named) > 15
    for name in named:
        family = next((name.removesuffix(s) for s in _SUFFIXES if name.endswith(s)), name)
        assert name in exported or family in exported, name
    panels = " ".join(p["title"].lower() for p in DASHBOARD["panels"])
    for topic in (
        "requests",
        "latency",
        "queue depth",
        "queue wait",
        "pass",
        "cache",
        "errors",
        "models",
        "process",
    ):
        assert topic in panels, topic
