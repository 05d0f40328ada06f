"""Admin operations shared by the admin web API and the bot's admin commands.

Each function takes the caller's `Session` (it never commits) and an `actor` string
("api" for the bearer token, "tg:<telegram id>" for a bot admin), and writes one AuditEntry
per mutation. Webhook events they emit are collected on the session: after the commit the
caller publishes them with `tasks.webhooks.enqueue_deliveries(celery, ids)` where `ids` came
from `tasks.webhooks.take_emitted(session)` before the session closed. A retried job must be
dispatched after the commit (`tasks.dispatch.dispatch_job`); the outbox sweep covers a crash."""

from __future__ import annotations

import logging
import math
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import Job, JobStatus, User
from db.repositories.audit import AuditRepository
from db.repositories.jobs import JobRepository
from db.repositories.stats import StatsRepository
from db.repositories.users import UserRepository
from service.errors import IllegalTransition, NotFound, ValidationFailed
from tasks.webhooks import emit_event, job_event_payload

logger = logging.getLogger(__name__)

# Daily quotas above this are surely a typo (the column is a 32-bit integer).
MAX_QUOTA = 1_000_000
WORKER_WINDOW = timedelta(hours=1)
STATS_WINDOW = timedelta(hours=24)


def audit(
    session: Session, actor: str, action: str, target: str | None = None, **details: Any
) -> None:
    """Append an audit entry for a mutation done by `actor`."""
    AuditRepository(session).record(actor, action, target, **details)
    logger.info("audit: %s %s %s", actor, action, target or "")


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


def _user(session: Session, telegram_id: int) -> User:
    user = UserRepository(session).by_telegram_id(telegram_id)
    if user is None:
        raise NotFound(f"user {telegram_id} not found", telegram_id=telegram_id)
    return user


def ban_user(session: Session, telegram_id: int, actor: str) -> User:
    """Ban a user by Telegram id (they are told once, then ignored)."""
    user = _user(session, telegram_id)
    if not user.is_banned:
        user.is_banned = True
        user.ban_notified = False
    audit(session, actor, "user.ban", f"user:{telegram_id}")
    return user


def unban_user(session: Session, telegram_id: int, actor: str) -> User:
    """Lift a user's ban."""
    user = _user(session, telegram_id)
    user.is_banned = False
    user.ban_notified = False
    audit(session, actor, "user.unban", f"user:{telegram_id}")
    return user


def set_quota(session: Session, telegram_id: int, quota: int | None, actor: str) -> User:
    """Set a user's daily quota; None restores the configured default."""
    if quota is not None and not 0 <= quota <= MAX_QUOTA:
        raise ValidationFailed(f"quota must be between 0 and {MAX_QUOTA}", quota=quota)
    user = _user(session, telegram_id)
    previous = user.daily_quota
    user.daily_quota = quota
    audit(session, actor, "user.quota", f"user:{telegram_id}", quota=quota, previous=previous)
    return user


def cancel_job(session: Session, job_id: int, actor: str) -> Job:
    """Cancel a job: a queued one at once, a running one at its next progress step."""
    job = JobRepository(session).get_for_update(job_id)
    if job.status is JobStatus.QUEUED:
        job.transition(JobStatus.CANCELLED)
        job.error_code = "cancelled"
        emit_event(session, "job.cancelled", job_event_payload(job))
    elif job.status is JobStatus.RUNNING:
        # The worker owns a running job; it sees the flag, stops and records the cancellation.
        job.cancel_requested = True
    else:
        raise IllegalTransition(
            f"job {job_id} is {job.status.value}; only queued or running jobs can be cancelled",
            job_id=job_id,
            current=job.status.value,
        )
    audit(session, actor, "job.cancel", f"job:{job_id}", status=job.status.value)
    return job


def retry_job(session: Session, job_id: int, actor: str) -> Job:
    """Put a failed or cancelled job back in the queue (dispatch it after the commit)."""
    job = JobRepository(session).get_for_update(job_id)
    previous = job.status.value
    job.transition(JobStatus.QUEUED)
    audit(session, actor, "job.retry", f"job:{job_id}", previous=previous)
    return job
