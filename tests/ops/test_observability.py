"""deploy/observability: the alerting rules pass the real promtool and its unit tests, the
PrometheusRule carries the same rules, and every metric the rules and the dashboard name
is one a live pod exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from consumers.settings import Settings
from events import jetstream as defs
from sandbox._proc import free_port
from tests.harness import Stack, wait_for
from tests.ops.test_deploy import BASE, render

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "deploy" / "observability"
RULES = OBS / "alerts.yaml"
DASHBOARD = OBS / "dashboard.json"
RULE_TESTS = ROOT / "tests" / "observability" / "alerts.test.yaml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not found: `make deps` installs it (Debian package "
    "`prometheus`, through apt); these tests need the real promtool")
# What the dashboard must show, by the metric that shows it.
DASHBOARD_SHOWS = {
    "throughput": "batchyard_messages_total", "parked": "batchyard_parked_messages",
    "lag": "batchyard_consumer_pending", "active jobs": "batchyard_active_jobs",
    "job limit": "batchyard_max_active_jobs", "tokens": "batchyard_enqueued_tokens",
    "token limit": "batchyard_max_enqueued_tokens",
    "quota waits": "batchyard_quota_wait_seconds_total", "dead letters": "batchyard_dead_total",
    "spend": "batchyard_spend_dollars_total", "cpu": "process_cpu_seconds_total",
    "memory": "process_resident_memory_bytes"}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
             "group_right", "bool", "offset",
             # aggregations, which may stand before `by (...)` rather than `(`
             "sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk",
             "bottomk", "quantile", "count_values"}


def _rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def _dashboard_exprs() -> list[str]:
    """Every panel's query, with the dashboard's variables given values."""
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"].replace("$namespace", "batchyard").replace("$__rate_interval", "5m")
            for p in dash["panels"] for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, labels or
    keywords)."""
    e = re.sub(r'"[^"]*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = _GROUPING.sub(r"\1", e)
    return {m[1] for m in re.finditer(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()", e)
            if m[1] not in _KEYWORDS}


def _promtool(*args: str) -> str:
    assert PROMTOOL
    run = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_metric_names_are_found_in_promql() -> None:
    """The extraction the export test relies on finds metrics, and only metrics."""
    assert metric_names('sum by (le, pod) (rate(a_b_total{x="y",z=~"w"}[5m])) and on (pod) '
                        'c > 0.9 * max(d offset 1h)') == {"a_b_total", "c", "d"}
    assert metric_names("time() - max(last_seconds) > 12 * 3600") == {"last_seconds"}


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    """`promtool check rules` accepts the rules file and the PrometheusRule's groups."""
    out = _promtool("check", "rules", str(RULES))
    assert f"SUCCESS: {len(_rules())} rules found" in out


@needs_promtool
def test_every_alert_fires_and_stays_quiet_under_promtool() -> None:
    """`promtool test rules` passes, with a firing and a not-firing case for every alert."""
    _promtool("test", "rules", str(RULE_TESTS))
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for t in case["alert_rule_test"]:
            (firing if t["exp_alerts"] else quiet).add(t["alertname"])
    alerts = {r["alert"] for r in _rules()}
    assert len(alerts) == 8
    assert firing == alerts and quiet == alerts


def test_prometheusrule_carries_the_rules_file() -> None:
    """deploy/k8s/base's PrometheusRule has exactly the groups of the plain rules file."""
    (rule,) = [d for d in render(BASE) if d["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "batchyard"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every dashboard query parses (promtool checks them as recording rules)."""
    exprs = _dashboard_exprs()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    assert f"SUCCESS: {len(exprs)} rules found" in _promtool("check", "rules", str(path))


def test_dashboard_shows_what_an_operator_needs() -> None:
    """Throughput, parked, lag, jobs and tokens against limits, quota waits, dead letters,
    spend, CPU and memory each have a panel; panel ids are unique."""
    dash = json.loads(DASHBOARD.read_text())
    named = set().union(*(metric_names(e) for e in _dashboard_exprs()))
    assert {k: v for k, v in DASHBOARD_SHOWS.items() if v not in named} == {}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dash["panels"])


def _exported(text: str) -> tuple[set[str], dict[str, float]]:
    """Names a scrape offers (a labelled metric with no series yet offers its TYPE line),
    and its samples."""
    names: set[str] = set()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "counter" and not name.endswith("_total"):
                names.add(name + "_total")
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        elif line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            names.add(series.split("{", 1)[0])
            samples[series] = float(value)
    return names, samples


async def test_every_metric_named_is_exported_by_a_pod(stack: Stack) -> None:
    """A live pod's /metrics offers every metric the rules and the dashboard name, and the
    gauges read at scrape time carry values."""
    port = free_port()
    await stack.pod("all", BATCHYARD_HTTP_PORT=str(port))
    await stack.started()

    async def scrape() -> str | None:
        async with aiohttp.ClientSession() as s, \
                s.get(f"http://127.0.0.1:{port}/metrics") as r:
            text = await r.text()
        # key-health's first check has landed: every gauge has a reading
        return text if "batchyard_key_valid 1.0" in text else None

    names, samples = _exported(await wait_for(scrape, 60, what="a scrape after the key check"))
    wanted = set().union(*(metric_names(r["expr"]) for r in _rules()),
                         *(metric_names(e) for e in _dashboard_exprs()))
    assert len(wanted) >= 25
    assert wanted - names == set()
    settings = Settings.from_env(stack.env())
    assert samples["batchyard_max_active_jobs"] == settings.max_active_jobs
    assert samples["batchyard_parked_messages"] == 0
    assert samples["batchyard_active_jobs"] == 0 and samples["batchyard_quota_gate_closed"] == 0
    assert {f'batchyard_consumer_pending{{consumer="{c.name}"}}'
            for c in defs.CONSUMERS} <= samples.keys()
