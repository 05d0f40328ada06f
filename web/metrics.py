"""`/metrics`: the process counters (`core.metrics`) followed by job, user, webhook and broadcast
figures read from the database at scrape time (the one place every process writes to) and the
broker's queue depths."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from core.metrics import Metrics
from domain.stats import DURATION_BUCKETS, DatabaseSnapshot

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SnapshotCollector(Collector):
    """Exposes a `DatabaseSnapshot` as gauges and a histogram."""

    def __init__(self, snapshot: DatabaseSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        jobs = GaugeMetricFamily(
            "facechain_jobs", "Jobs by status and kind", labels=["status", "kind"]
        )
        queue = GaugeMetricFamily(
            "facechain_queue_depth", "Jobs queued and not yet started, by kind", labels=["kind"]
        )
        queued: dict[str, int] = {}
        for status, kind, n in snap.jobs:
            jobs.add_metric([status, kind], n)
            if status == "queued":
                queued[kind] = queued.get(kind, 0) + n
        for kind in sorted(queued):
            queue.add_metric([kind], queued[kind])
        if not queued:
            queue.add_metric(["all"], 0)
        yield jobs
        yield queue
        hist = HistogramMetricFamily(
            "facechain_job_duration_seconds",
            "Run time of completed jobs (started to finished), by kind",
            labels=["kind"],
        )
        for kind, data in sorted(snap.durations.items()):
            buckets = [
                (str(float(b)), c) for b, c in zip(DURATION_BUCKETS, data["buckets"], strict=True)
            ]
            buckets.append(("+Inf", data["count"]))
            hist.add_metric([kind], buckets, sum_value=data["sum"])
        yield hist
        failures = GaugeMetricFamily(
            "facechain_job_failures", "Failed jobs by error code", labels=["code"]
        )
        for code, n in sorted(snap.failures.items()):
            failures.add_metric([code], n)
        yield failures
        users = GaugeMetricFamily("facechain_users", "Users by state", labels=["state"])
        for state, n in sorted(snap.users.items()):
            users.add_metric([state], n)
        yield users
        deliveries = GaugeMetricFamily(
            "facechain_webhook_deliveries",
            "Outgoing webhook deliveries by status",
            labels=["status"],
        )
        for status, n in sorted(snap.deliveries.items()):
            deliveries.add_metric([status], n)
        yield deliveries
        broadcasts = GaugeMetricFamily(
            "facechain_broadcasts", "Broadcasts by status", labels=["status"]
        )
        for status, n in sorted(snap.broadcasts.items()):
            broadcasts.add_metric([status], n)
        yield broadcasts
        flagged = GaugeMetricFamily(
            "facechain_safety_flagged_pictures",
            "Pictures the safety checker flagged, by kind (portrait, template, upscale, selfie, "
            "pose, template_photo, training, sample), from the audit log",
            labels=["kind"],
        )
        for kind, n in sorted(snap.safety_flagged.items()):
            flagged.add_metric([kind], n)
        yield flagged


class DatabaseUpCollector(Collector):
    """Whether the scrape could read the database figures."""

    def __init__(self, up: bool) -> None:
        self.up = up

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "facechain_metrics_database_up", "1 if this scrape read the database figures"
        )
        gauge.add_metric([], 1.0 if self.up else 0.0)
        yield gauge


class BrokerQueueCollector(Collector):
    """Messages waiting in each worker queue, read from the broker (Redis LLEN)."""

    def __init__(self, depths: dict[str, int] | None) -> None:
        self.depths = depths

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "facechain_metrics_broker_up", "1 if this scrape read the broker's queue depths"
        )
        up.add_metric([], 0.0 if self.depths is None else 1.0)
        yield up
        if self.depths is not None:
            depth = GaugeMetricFamily(
                "facechain_broker_queue_messages",
                "Messages waiting in the broker, by worker queue (gpu, train, io)",
                labels=["queue"],
            )
            for queue, n in sorted(self.depths.items()):
                depth.add_metric([queue], float(n))
            yield depth


def render(
    metrics: Metrics,
    snapshot: DatabaseSnapshot | None,
    queue_depths: dict[str, int] | None = None,
) -> bytes:
    """The exposition text: process counters, then the database figures and the broker's
    queue depths (each when it could be read)."""
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(DatabaseUpCollector(snapshot is not None))
    if snapshot is not None:
        scrape.register(SnapshotCollector(snapshot))
    scrape.register(BrokerQueueCollector(queue_depths))
    return generate_latest(metrics.registry) + generate_latest(scrape)
