"""Figures about the service: `/stats` and the admin API's stats, and what `/metrics` reads
from the database at scrape time."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import JobStatus
from db.repositories.broadcasts import BroadcastRepository
from db.repositories.stats import StatsRepository
from db.repositories.webhooks import WebhookDeliveryRepository
from domain.safety import flagged_totals

WORKER_WINDOW = timedelta(hours=1)
STATS_WINDOW = timedelta(hours=24)
# Job run times: seconds (the tiny profile takes < 1 s, a real training tens of minutes).
DURATION_BUCKETS: tuple[float, ...] = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100, nearest-rank) of values; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def stats(session: Session) -> dict[str, Any]:
    """Users, jobs by status and kind, queue depth, run-time average/p95 and workers seen."""
    now = utcnow()
    repo = StatsRepository(session)
    by_status: dict[str, int] = {s.value: 0 for s in JobStatus}
    by_kind: dict[str, dict[str, int]] = {}
    for status, kind, n in repo.jobs_by_status_and_kind():
        by_status[status] = by_status.get(status, 0) + n
        by_kind.setdefault(kind, {})[status] = n
    durations = repo.recent_durations(now - STATS_WINDOW)
    return {
        "users": repo.user_counts(now - STATS_WINDOW),
        "jobs": {"by_status": by_status, "by_kind": by_kind},
        "queue_depth": by_status[JobStatus.QUEUED.value],
        "running": by_status[JobStatus.RUNNING.value],
        "durations_24h": {
            "count": len(durations),
            "avg_seconds": sum(durations) / len(durations) if durations else None,
            "p95_seconds": percentile(durations, 95),
        },
        "failures_by_code": repo.failures_by_code(),
        "workers_seen": repo.workers_seen(now - WORKER_WINDOW),
        "generated_at": now.isoformat(),
    }


@dataclass(frozen=True)
class DatabaseSnapshot:
    """Job, user, webhook and broadcast figures read in one transaction."""

    jobs: list[tuple[str, str, int]]
    durations: dict[str, dict[str, Any]]
    failures: dict[str, int]
    users: dict[str, int]
    deliveries: dict[str, int]
    broadcasts: dict[str, int]
    # Pictures the safety checker flagged, by kind (from the audit log: every process's).
    safety_flagged: dict[str, int] = field(default_factory=dict)


# One scrape's database figures: aggregates only (no row is read), cut off past this.
SNAPSHOT_STATEMENT_TIMEOUT_MS = 2000


def read_snapshot(session: Session) -> DatabaseSnapshot:
    """Everything the metrics scrape reports from the database: grouped counts and sums, each
    statement bounded in time (a slow database makes the scrape say so, never pile up)."""
    repo = StatsRepository(session)
    repo.bound_statement_time(SNAPSHOT_STATEMENT_TIMEOUT_MS)
    return DatabaseSnapshot(
        jobs=repo.jobs_by_status_and_kind(),
        durations=repo.duration_buckets(DURATION_BUCKETS),
        failures=repo.failures_by_code(),
        users=repo.user_counts(utcnow() - STATS_WINDOW),
        deliveries=WebhookDeliveryRepository(session).counts_by_status(),
        broadcasts=BroadcastRepository(session).counts_by_status(),
        safety_flagged=flagged_totals(session),
    )
