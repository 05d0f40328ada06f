"""Every metric the Grafana dashboard and the Prometheus alert rules query is one the service
exposes: web's /metrics (counters and database/broker figures) and the probe /metrics of the
bot and worker roles."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "facechain.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
# Series Prometheus makes itself, not the service.
BUILTIN = {"up"}
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def queried_metrics() -> set[str]:
    """Metric names used in the dashboard's and the alert rules' PromQL."""
    exprs: list[str] = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        exprs += [t["expr"] for t in panel["targets"]]
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        exprs += [rule["expr"] for rule in group["rules"]]
    names = set()
    for expr in exprs:
        names |= set(re.findall(r"\b(facechain_[a-z_]+|up)\b", expr))
    return names


def exposed(text: str) -> set[str]:
    """Every sample name in an exposition text (histogram buckets, counter totals included)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names |= {sample.name for sample in family.samples}
    return names


def test_the_dashboard_is_provisioned_json() -> None:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "facechain-bot"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    topics = ("jobs by state", "queue depth", "p50", "failures", "updates", "delivery", "gpu")
    for topic in (*topics, "delivery errors", "broker queue depth per queue"):
        assert topic in titles, topic
    provisioning = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/facechain.yml").read_text()
    )
    assert provisioning["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"


def test_prometheus_scrapes_every_role() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    targets = {
        name
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    }
    assert targets == {"web", "bot", "worker-gpu", "worker-train", "worker-io", "beat"}


def _known(name: str, families: set[str]) -> bool:
    return name in families or any(
        name == family + suffix for family in families for suffix in SUFFIXES
    )


def test_every_queried_metric_is_exposed(session: Any) -> None:
    """web's /metrics (from a real database) plus the bot's and a gpu worker's probe."""
    from core.metrics import create_metrics
    from domain.stats import read_snapshot
    from service.probe import GpuMemoryCollector
    from web.metrics import render

    metrics = create_metrics()
    web_text = render(metrics, read_snapshot(session), {"gpu": 0, "train": 0, "io": 0}).decode()
    worker = CollectorRegistry()
    worker.register(GpuMemoryCollector())
    families = exposed(web_text) | exposed(generate_latest(metrics.registry).decode())
    families |= exposed(generate_latest(worker).decode())
    missing = sorted(n for n in queried_metrics() - BUILTIN if not _known(n, families))
    assert not missing, f"queried but never exposed: {missing}"
