"""Releasing a created job to the workers, cancelling (by the user or an admin), an admin's
retry, and the admin's job list."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from core.errors import IllegalTransition
from db.models import Job, JobKind, JobStatus
from db.repositories.jobs import JobRepository
from domain import billing, outbox
from domain.audit import audit
from domain.webhooks import emit_job_event


def release_job(session: Session, job_id: int, status_message_id: int | None = None) -> None:
    """Hand a created job to the workers (after the commit), remembering its status message so
    workers can edit it."""
    job = session.get(Job, job_id)
    if job is None:
        return
    if status_message_id is not None:
        job.status_message_id = status_message_id
    outbox.pending(session).jobs.append(job_id)


class CancelOutcome:
    CANCELLED = "cancelled"
    REQUESTED = "requested"
    FINISHED = "finished"
    MISSING = "missing"


def _cancel(session: Session, job: Job, *, shown: bool) -> str:
    """Cancel a queued job at once (emitting job.cancelled); flag a running one for its worker.

    `shown`: the caller tells the chat itself (the user's Cancel button edits the status
    message), so the cancellation counts as delivered; otherwise the io worker tells the chat
    after the commit (and the sweep again if that message is lost)."""
    if job.status is JobStatus.QUEUED:
        job.transition(JobStatus.CANCELLED)
        job.error_code = "cancelled"
        billing.settle_ended(session, job)
        emit_job_event(session, job, "job.cancelled")
        if shown:
            job.delivered_at = job.finished_at
        elif job.chat_id is not None:
            outbox.pending(session).results.append(job.id)
        return CancelOutcome.CANCELLED
    if job.status is JobStatus.RUNNING:
        # The worker owns a running job; it sees the flag, stops and records the cancellation.
        job.cancel_requested = True
        return CancelOutcome.REQUESTED
    return CancelOutcome.FINISHED


def cancel_for_user(session: Session, user_id: int, job_id: int) -> str:
    """The user's Cancel button: a `CancelOutcome` (missing if the job is not theirs)."""
    job = session.get(Job, job_id, with_for_update=True, populate_existing=True)
    if job is None or job.user_id != user_id:
        return CancelOutcome.MISSING
    return _cancel(session, job, shown=True)


def cancel_job(session: Session, job_id: int, actor: str) -> Job:
    """An admin's cancel: a queued job at once, a running one at its next progress step."""
    job = JobRepository(session).get_for_update(job_id)
    if _cancel(session, job, shown=False) == CancelOutcome.FINISHED:
        raise IllegalTransition(
            f"job {job_id} is {job.status.value}; only queued or running jobs can be cancelled",
            job_id=job_id,
            current=job.status.value,
        )
    audit(session, actor, "job.cancel", f"job:{job_id}", status=job.status.value)
    return job


def retry_job(session: Session, job_id: int, actor: str) -> Job:
    """Put a failed or cancelled job back in the queue (published after the commit).

    The job keeps what it was charged; a charge already given back is not taken again (the
    operator retries at their own cost)."""
    job = JobRepository(session).get_for_update(job_id)
    previous = job.status.value
    job.transition(JobStatus.QUEUED)
    audit(session, actor, "job.retry", f"job:{job_id}", previous=previous)
    outbox.pending(session).jobs.append(job_id)
    return job


def jobs_page(
    session: Session,
    *,
    status: JobStatus | None,
    kind: JobKind | None,
    telegram_id: int | None,
    limit: int,
    offset: int,
) -> tuple[Sequence[Job], int]:
    """Jobs newest first, filtered by status, kind and the user's Telegram id."""
    return JobRepository(session).page(
        JobRepository(session).search(status=status, kind=kind, telegram_id=telegram_id),
        limit=limit,
        offset=offset,
    )


def get_job(session: Session, job_id: int) -> Job:
    """One job (NotFound otherwise)."""
    return JobRepository(session).get(job_id)
