"""A job's life on the workers: claimed, running with progress and cancellation, finished,
delivered; and the sweep that finds jobs whose message or worker was lost.

A job is idempotent: a redelivered message whose job is already finished does nothing, and a
message for a job that is running elsewhere is a redelivery after a crash (`attempts` counts).
Every change happens under the job's row lock; the io work (sending results, progress edits)
is the caller's, after the commit."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import FINAL_STATUSES, Job, JobKind, JobStatus, Style, User
from db.repositories.jobs import JobRepository
from domain.webhooks import emit_job_event

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
# A running job whose row has not been touched (progress writes) for this long lost its worker.
STALE_AFTER = timedelta(minutes=3)
# A queued job whose message may have been lost with the broker (e.g. Redis restarted without
# persistence) is re-sent after this long; duplicates are harmless (tasks are idempotent).
REQUEUE_AFTER = timedelta(minutes=5)
# A finished job still not delivered this long after it finished lost its delivery message (the
# broker restarted, or was down when the worker finished). Longer than a delivery's own retries
# take, so a delivery that is merely waiting out a 429 is not sent twice.
REDELIVER_AFTER = timedelta(minutes=15)
# Sends of a job's outcome in all (the io task's own retries and the sweep's re-sends together).
MAX_DELIVERY_ATTEMPTS = 12
_EVENT_FOR_STATUS = {
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}


@dataclass
class JobOutcome:
    """What a job produced: result blobs and per-result facts."""

    result_blobs: list[str] = field(default_factory=list)
    result_meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobSnapshot:
    """The job's inputs, read in the claiming transaction (no ORM objects outlive it)."""

    id: int
    user_id: int | None
    params: dict[str, Any]
    style_id: int | None
    template_id: int | None
    attempts: int


@dataclass(frozen=True)
class Claim:
    """The claim's verdict: run `snapshot`, or nothing to run (`ended`: the job ended here and
    its outcome must be delivered)."""

    snapshot: JobSnapshot | None
    ended: bool = False


def worker_name(hostname: str | None) -> str:
    """`<node>:<pid>`, as recorded in `Job.worker`."""
    return f"{_node(hostname)}:{os.getpid()}"


def _node(hostname: str | None) -> str:
    return hostname or socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_alive(job: Job, hostname: str | None) -> bool:
    """Whether the process that marked this job running may still be working on it.

    A pool child killed on this node is known dead at once (its pid is gone), so its job is
    taken over immediately; an owner on another node counts as alive until the row has gone
    `STALE_AFTER` without a progress write."""
    node, _, pid = (job.worker or "").rpartition(":")
    if node and node == _node(hostname) and pid.isdigit():
        # This process runs one task at a time, so its own earlier attempt has ended.
        return int(pid) != os.getpid() and _pid_alive(int(pid))
    return job.updated_at > utcnow() - STALE_AFTER


def claim(session: Session, job_id: int, hostname: str | None) -> Claim:
    """Move the job to running and snapshot its inputs, unless there is nothing to do."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        logger.warning("job %s vanished before it ran", job_id)
        return Claim(None)
    if job.status in FINAL_STATUSES:
        logger.info("job %s already %s; redelivery ignored", job_id, job.status.value)
        return Claim(None)
    if job.status is JobStatus.RUNNING and owner_alive(job, hostname):
        logger.info("job %s is running on %s; duplicate message ignored", job_id, job.worker)
        return Claim(None)
    if job.cancel_requested:
        job.transition(JobStatus.CANCELLED)
        return Claim(None, ended=True)
    if job.status is JobStatus.RUNNING and job.attempts >= MAX_ATTEMPTS:
        job.fail("internal", f"gave up after {job.attempts} attempts")
        return Claim(None, ended=True)
    job.transition(JobStatus.RUNNING)
    job.worker = worker_name(hostname)
    return Claim(
        JobSnapshot(
            id=job.id,
            user_id=job.user_id,
            params=dict(job.params),
            style_id=job.style_id,
            template_id=job.template_id,
            attempts=job.attempts,
        )
    )


def dispatchable_kind(session: Session, job_id: int) -> JobKind | None:
    """The kind of a job whose task should be published (queued, or a running one being
    redelivered); None when it needs none."""
    job = session.get(Job, job_id)
    if job is None or job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
        return None
    return job.kind


def mark_dispatched(session: Session, job_id: int) -> None:
    """The job's task reached the broker (the sweep leaves it alone from now on)."""
    job = session.get(Job, job_id)
    if job is not None:
        job.dispatched_at = utcnow()


def record_progress(session: Session, job_id: int, fraction: float) -> bool | None:
    """Store progress in [0, 1]; returns whether a cancel was asked (None: the job is gone)."""
    job = session.get(Job, job_id)
    if job is None:
        return None
    job.progress = max(0.0, min(1.0, float(fraction)))
    return job.cancel_requested


def cancel_requested(session: Session, job_id: int) -> bool:
    """Whether the user (or an admin) asked the running job to stop."""
    job = session.get(Job, job_id)
    return bool(job and job.cancel_requested)


def finish(
    session: Session,
    job_id: int,
    outcome: JobOutcome | None,
    error: tuple[str, str] | None,
    cancelled: bool = False,
) -> JobStatus:
    """Record the outcome under the row lock and emit its job.* event; the final status."""
    job = session.get(Job, job_id, with_for_update=True)
    assert job is not None
    if job.status is not JobStatus.RUNNING:
        # Cancelled or failed by the sweep meanwhile: keep that verdict.
        return job.status
    if cancelled:
        job.transition(JobStatus.CANCELLED)
    elif error is not None:
        job.fail(*error)
    else:
        assert outcome is not None
        job.result_blobs = outcome.result_blobs
        job.result_meta = outcome.result_meta
        job.transition(JobStatus.SUCCEEDED)
    emit_job_event(session, job, _EVENT_FOR_STATUS[job.status])
    return job.status


def fail_unclaimed(session: Session, job_id: int, code: str, detail: str) -> JobStatus | None:
    """Fail a job before it ran (its worker cannot build the models); None if already final."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.status in FINAL_STATUSES:
        return None
    if job.status is JobStatus.QUEUED:
        job.transition(JobStatus.RUNNING)
    job.fail(code, detail)
    return job.status


def record_pose_map(session: Session, job_id: int, key: str) -> None:
    """Remember the skeleton map extracted for a job (a retry reuses it; /forget deletes it)."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is not None:
        # A new dict: the JSON column only notices assignment.
        job.params = {**(job.params or {}), "pose_map_blob": key}


# ---- the sweep ----


@dataclass
class SweepPlan:
    """What one sweep decided: jobs to publish again, and jobs whose outcome to deliver."""

    resend: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    undelivered: list[int] = field(default_factory=list)


def sweep(
    session: Session,
    *,
    outbox_grace: timedelta,
    time_limit: timedelta,
    train_time_limit: timedelta | None = None,
    requeue_after: timedelta = REQUEUE_AFTER,
    stale_after: timedelta = STALE_AFTER,
    redeliver_after: timedelta = REDELIVER_AFTER,
    now: datetime | None = None,
) -> SweepPlan:
    """Find lost jobs to re-send, stalled ones to redeliver, those past their limit to fail, and
    finished jobs whose result never reached the user."""
    now = now or utcnow()
    plan = SweepPlan()
    repo = JobRepository(session)
    plan.resend += [j.id for j in repo.undispatched(outbox_grace)]
    plan.resend += list(
        session.scalars(
            select(Job.id).where(
                Job.status == JobStatus.QUEUED, Job.dispatched_at < now - requeue_after
            )
        )
    )
    for job in repo.stuck_running(now - time_limit):
        # Style trainings legitimately run for hours; they have their own limit.
        limit = train_time_limit or time_limit if job.kind is JobKind.TRAINING else time_limit
        if job.started_at is not None and job.started_at < now - limit:
            job.fail("timed_out", f"running for more than {limit}")
            plan.failed.append(job.id)
    stalled = session.scalars(
        select(Job).where(Job.status == JobStatus.RUNNING, Job.updated_at < now - stale_after)
    ).all()
    for job in stalled:
        if job.attempts >= MAX_ATTEMPTS:
            job.fail("internal", f"worker lost {job.attempts} times")
            plan.failed.append(job.id)
        else:
            plan.resend.append(job.id)
    undelivered = session.scalars(
        select(Job)
        .where(
            Job.status.in_((JobStatus.SUCCEEDED, JobStatus.FAILED)),
            Job.chat_id.is_not(None),
            Job.delivered_at.is_(None),
            Job.delivery_error.is_(None),
            Job.finished_at <= now - redeliver_after,
        )
        .with_for_update(skip_locked=True)
    ).all()
    for job in undelivered:
        # Bounded: a delivery that keeps failing is given up and recorded, never re-sent forever.
        if job.delivery_attempts >= MAX_DELIVERY_ATTEMPTS:
            job.delivery_error = f"gave up after {job.delivery_attempts} attempts"
        else:
            plan.undelivered.append(job.id)
    plan.resend = list(dict.fromkeys(plan.resend))
    return plan


# ---- delivery to the chat ----


@dataclass
class Delivery:
    """What the chat messages about a job need (read in one short transaction)."""

    job_id: int
    kind: JobKind
    status: JobStatus
    chat_id: int | None
    status_message_id: int | None
    language: str
    style_id: int | None
    error_code: str | None
    error_detail: str | None = None
    result_blobs: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    position: int = 0
    progress: float = 0.0
    done: bool = False
    attempts: int = 0


def _language(session: Session, job: Job) -> str:
    user = session.get(User, job.user_id) if job.user_id else None
    return user.language if user else "en"


def delivery(session: Session, job_id: int) -> Delivery | None:
    """The job as its chat messages show it; None when the job is gone."""
    job = session.get(Job, job_id)
    if job is None:
        return None
    language = _language(session, job)
    meta = dict(job.result_meta or {})
    if job.kind is JobKind.TRAINING and job.style_id is not None and "style_name" not in meta:
        # "Your style “…” is ready!" names the style the training registered.
        style = session.get(Style, job.style_id)
        if style is not None:
            meta["style_name"] = style.name_for(language)
    return Delivery(
        job_id=job.id,
        kind=job.kind,
        status=job.status,
        chat_id=job.chat_id,
        status_message_id=job.status_message_id,
        language=language,
        style_id=job.style_id,
        error_code=job.error_code,
        error_detail=job.error_detail,
        result_blobs=list(job.result_blobs or []),
        meta=meta,
        position=JobRepository(session).queue_position(job),
        progress=job.progress,
        done=job.delivery_done,
        attempts=job.delivery_attempts,
    )


def start_delivery(session: Session, job_id: int) -> Delivery | None:
    """Count one send of a finished job's outcome and snapshot it; None when the job is gone.

    `Delivery.done` says the chat already has it (or its delivery was given up): send nothing."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        return None
    if job.status in FINAL_STATUSES and not job.delivery_done:
        job.delivery_attempts += 1
    return delivery(session, job_id)


def mark_delivered(session: Session, job_id: int) -> None:
    """The outcome reached the chat (or there is no chat to reach): record when."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is not None and job.status in FINAL_STATUSES and job.delivered_at is None:
        job.delivered_at = utcnow()


def mark_undeliverable(session: Session, job_id: int, error: str) -> None:
    """Telegram refused the outcome for good (or the attempts ran out): record why."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is not None and not job.delivery_done:
        job.delivery_error = error[:2000]
        logger.warning("job %s: delivery given up: %s", job_id, error)


@dataclass(frozen=True)
class PosePreview:
    """Where the "pose found" preview goes and which skeleton map it shows."""

    chat_id: int
    language: str
    map_blob: str


def pose_preview(session: Session, job_id: int) -> PosePreview | None:
    """The preview of a job's extracted pose, while it is still worth sending."""
    job = session.get(Job, job_id)
    if job is None or job.chat_id is None:
        return None
    key = (job.params or {}).get("pose_map_blob")
    # Once the album is out, or the job ended otherwise, a preview would only confuse.
    if (
        not isinstance(key, str)
        or job.status not in (JobStatus.RUNNING, JobStatus.SUCCEEDED)
        or job.delivered_at is not None
    ):
        return None
    return PosePreview(job.chat_id, _language(session, job), key)
