"""Aggregate queries behind the admin stats and the Prometheus metrics."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Float, case, cast, func, select, text
from sqlalchemy.orm import Session

from db.models import Job, JobStatus, User

# Jobs whose duration counts: they ran to completion.
_COMPLETED = (JobStatus.SUCCEEDED,)


class StatsRepository:
    """Read-only aggregates over users and jobs."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def _duration_seconds(self) -> ColumnElement[float]:
        """finished_at - started_at in seconds, in this database's dialect."""
        if self.session.get_bind().dialect.name == "sqlite":
            return cast(
                (func.julianday(Job.finished_at) - func.julianday(Job.started_at)) * 86400.0, Float
            )
        return cast(func.extract("epoch", Job.finished_at - Job.started_at), Float)

    def bound_statement_time(self, milliseconds: int) -> None:
        """Cancel any statement of this transaction that runs longer (PostgreSQL; a no-op on
        SQLite, whose files are small)."""
        if self.session.get_bind().dialect.name == "postgresql":
            self.session.execute(text(f"SET LOCAL statement_timeout = {int(milliseconds)}"))

    def user_counts(self, active_since: datetime) -> dict[str, int]:
        """Total, banned and recently active users."""
        row = self.session.execute(
            select(
                func.count(User.id),
                func.coalesce(func.sum(case((User.is_banned.is_(True), 1), else_=0)), 0),
                func.coalesce(func.sum(case((User.last_seen_at >= active_since, 1), else_=0)), 0),
            )
        ).one()
        return {"total": int(row[0]), "banned": int(row[1]), "active_24h": int(row[2])}

    def jobs_by_status_and_kind(self) -> list[tuple[str, str, int]]:
        """(status, kind, count) for every combination present."""
        rows = self.session.execute(
            select(Job.status, Job.kind, func.count(Job.id)).group_by(Job.status, Job.kind)
        ).all()
        return [(str(status), str(kind), int(n)) for status, kind, n in rows]

    def recent_durations(self, since: datetime, limit: int = 10_000) -> list[float]:
        """Run times in seconds of jobs completed since a moment (newest first, capped)."""
        rows = self.session.execute(
            select(Job.started_at, Job.finished_at)
            .where(
                Job.status.in_(_COMPLETED),
                Job.finished_at >= since,
                Job.started_at.is_not(None),
            )
            .order_by(Job.finished_at.desc())
            .limit(limit)
        ).all()
        return [max(0.0, (f - s).total_seconds()) for s, f in rows if s and f]

    def duration_buckets(self, bounds: Sequence[float]) -> dict[str, dict[str, Any]]:
        """Per kind: cumulative counts for each upper bound, the total count and the sum."""
        seconds = self._duration_seconds()
        columns = [func.sum(case((seconds <= b, 1), else_=0)) for b in bounds]
        rows = self.session.execute(
            select(Job.kind, func.count(Job.id), func.sum(seconds), *columns)
            .where(
                Job.status.in_(_COMPLETED),
                Job.started_at.is_not(None),
                Job.finished_at.is_not(None),
            )
            .group_by(Job.kind)
        ).all()
        result: dict[str, dict[str, Any]] = {}
        for kind, count, total, *cumulative in rows:
            result[str(kind)] = {
                "count": int(count),
                "sum": float(total or 0.0),
                "buckets": [int(c or 0) for c in cumulative],
            }
        return result

    def failures_by_code(self) -> dict[str, int]:
        """Failed jobs per error code."""
        rows = self.session.execute(
            select(Job.error_code, func.count(Job.id))
            .where(Job.status == JobStatus.FAILED)
            .group_by(Job.error_code)
        ).all()
        return {str(code or "internal"): int(n) for code, n in rows}

    def workers_seen(self, since: datetime) -> list[dict[str, Any]]:
        """Workers that started a job since a moment, with the last time each did."""
        rows = self.session.execute(
            select(Job.worker, func.max(Job.started_at), func.count(Job.id))
            .where(Job.worker.is_not(None), Job.started_at >= since)
            .group_by(Job.worker)
            .order_by(Job.worker)
        ).all()
        return [
            {"name": name, "last_job_at": last.isoformat() if last else None, "jobs": int(n)}
            for name, last, n in rows
        ]
