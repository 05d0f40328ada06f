"""Prometheus metrics: process counters the bot and web increment, plus job figures read from
the database at scrape time (the database is the one place every process writes to).

Counters live on a `Metrics` object with its own registry. The bot and the web server of one
process share `default_metrics()` (built on first use), e.g.
`default_metrics().updates_handled.labels(kind="message").inc()`, `record_error("no_face")`."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session

from db.base import utcnow
from db.repositories.broadcasts import BroadcastRepository
from db.repositories.stats import StatsRepository
from db.repositories.webhooks import WebhookDeliveryRepository

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Job run times: seconds (the tiny profile takes < 1 s, a real training tens of minutes).
DURATION_BUCKETS: tuple[float, ...] = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    """Process-local counters on their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.updates_handled = Counter(
            "facechain_updates_handled",
            "Telegram updates handled by the bot",
            ["kind"],
            registry=self.registry,
        )
        self.webhook_updates = Counter(
            "facechain_telegram_webhook_requests",
            "Requests to the Telegram webhook route by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.errors = Counter(
            "facechain_errors",
            "Errors by code and where they surfaced (bot, api, worker)",
            ["code", "source"],
            registry=self.registry,
        )
        self.http_requests = Counter(
            "facechain_admin_http_requests",
            "Admin web requests by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )

    def record_error(self, code: str, source: str = "bot") -> None:
        """Count one error with its stable code."""
        self.errors.labels(code=code, source=source).inc()

    def record_update(self, kind: str = "update") -> None:
        """Count one handled Telegram update."""
        self.updates_handled.labels(kind=kind).inc()


def create_metrics() -> Metrics:
    """A fresh set of counters (tests, or a second app in one process)."""
    return Metrics()


@functools.cache
def default_metrics() -> Metrics:
    """The counters shared by the bot and the web server of this process."""
    return create_metrics()


def record_error(code: str, source: str = "bot") -> None:
    """Count an error on the process's shared counters."""
    default_metrics().record_error(code, source)


def record_update(kind: str = "update") -> None:
    """Count a handled update on the process's shared counters."""
    default_metrics().record_update(kind)


@dataclass(frozen=True)
class DatabaseSnapshot:
    """Job, user, webhook and broadcast figures read in one transaction."""

    jobs: list[tuple[str, str, int]]
    durations: dict[str, dict[str, Any]]
    failures: dict[str, int]
    users: dict[str, int]
    deliveries: dict[str, int]
    broadcasts: dict[str, int]


def read_snapshot(session: Session) -> DatabaseSnapshot:
    """Query everything the scrape reports from the database."""
    repo = StatsRepository(session)
    return DatabaseSnapshot(
        jobs=repo.jobs_by_status_and_kind(),
        durations=repo.duration_buckets(DURATION_BUCKETS),
        failures=repo.failures_by_code(),
        users=repo.user_counts(utcnow() - timedelta(hours=24)),
        deliveries=WebhookDeliveryRepository(session).counts_by_status(),
        broadcasts=BroadcastRepository(session).counts_by_status(),
    )


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


def render(metrics: Metrics, snapshot: DatabaseSnapshot | None) -> bytes:
    """The exposition text: process counters followed by the database figures (if read)."""
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(DatabaseUpCollector(snapshot is not None))
    if snapshot is not None:
        scrape.register(SnapshotCollector(snapshot))
    return generate_latest(metrics.registry) + generate_latest(scrape)
