"""Jobs: creation, queue position and the outbox query."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Select, func, select

from db.base import utcnow
from db.models import ACTIVE_STATUSES, Job, JobKind, JobStatus, User
from db.repositories.base import RepositoryBase


class JobRepository(RepositoryBase[Job]):
    model = Job

    def search(
        self,
        *,
        status: JobStatus | None = None,
        kind: JobKind | None = None,
        telegram_id: int | None = None,
    ) -> Select[Job]:
        """A select of jobs, newest first, optionally filtered."""
        stmt = select(Job).order_by(Job.id.desc())
        if status is not None:
            stmt = stmt.where(Job.status == status)
        if kind is not None:
            stmt = stmt.where(Job.kind == kind)
        if telegram_id is not None:
            user_id = select(User.id).where(User.telegram_id == telegram_id).scalar_subquery()
            stmt = stmt.where(Job.user_id == user_id)
        return stmt

    def active_for_user(self, user_id: int) -> Sequence[Job]:
        return self.session.scalars(
            select(Job).where(Job.user_id == user_id, Job.status.in_(ACTIVE_STATUSES))
        ).all()

    def count_since(self, user_id: int, since: datetime, kinds: set[JobKind] | None = None) -> int:
        """Jobs the user created since a moment (daily quota), cancelled ones excluded."""
        stmt = select(func.count(Job.id)).where(
            Job.user_id == user_id, Job.created_at >= since, Job.status != JobStatus.CANCELLED
        )
        if kinds:
            stmt = stmt.where(Job.kind.in_(kinds))
        return int(self.session.scalar(stmt) or 0)

    def queue_position(self, job: Job) -> int:
        """How many queued or running jobs are ahead of this one (0 = next)."""
        return int(
            self.session.scalar(
                select(func.count(Job.id)).where(
                    Job.status.in_(ACTIVE_STATUSES), Job.id < job.id, Job.kind == job.kind
                )
            )
            or 0
        )

    def undispatched(self, older_than: timedelta, limit: int = 100) -> Sequence[Job]:
        """Queued jobs committed but never confirmed on the broker (the outbox)."""
        return self.session.scalars(
            select(Job)
            .where(
                Job.status == JobStatus.QUEUED,
                Job.dispatched_at.is_(None),
                Job.created_at < utcnow() - older_than,
            )
            .order_by(Job.id)
            .limit(limit)
        ).all()

    def for_user(self, user_id: int, limit: int = 10, offset: int = 0) -> Sequence[Job]:
        return self.session.scalars(
            select(Job)
            .where(Job.user_id == user_id)
            .order_by(Job.id.desc())
            .limit(limit)
            .offset(offset)
        ).all()

    def finished_sets(self, user_id: int, kinds: Sequence[JobKind], limit: int) -> Sequence[Job]:
        """The user's succeeded jobs of these kinds that have pictures, newest first."""
        return self.session.scalars(
            select(Job)
            .where(
                Job.user_id == user_id,
                Job.status == JobStatus.SUCCEEDED,
                Job.kind.in_(list(kinds)),
            )
            .order_by(Job.id.desc())
            .limit(limit)
        ).all()

    def counts_by_status(self) -> dict[str, int]:
        rows = self.session.execute(select(Job.status, func.count(Job.id)).group_by(Job.status))
        return {str(status): int(n) for status, n in rows}

    def finished_durations(self, since: datetime) -> list[float]:
        """Seconds from start to finish of jobs that succeeded since a moment."""
        rows = self.session.execute(
            select(Job.started_at, Job.finished_at).where(
                Job.status == JobStatus.SUCCEEDED,
                Job.finished_at >= since,
                Job.started_at.is_not(None),
            )
        ).all()
        return [(f - s).total_seconds() for s, f in rows if s and f]
