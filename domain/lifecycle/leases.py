"""Claiming a job under its lease, renewing and handing back the lease, progress and
cancellation, and finishing the job (the lease's rules are in the package's docstring)."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from db.base import db_now, lock_for_write, utcnow
from db.models import ACTIVE_STATUSES, FINAL_STATUSES, Job, JobKind, JobStatus
from domain.billing import settle_ended
from domain.webhooks import emit_job_event

logger = logging.getLogger(__name__)

# Claims of one job in all: a job whose workers keep dying (say, it runs the gpu out of memory
# and the kernel kills the worker) fails as `worker_lost` instead of taking down every worker.
MAX_ATTEMPTS = 3
# A worker's lease on a running job, unless the caller says otherwise (BROKER_JOB_LEASE_SECONDS).
DEFAULT_LEASE = timedelta(seconds=60)
# The broker's lease on a published job: if no worker claimed it this long after publishing (its
# message may have been lost with the broker, e.g. Redis restarted without persistence), the sweep
# publishes it again. Duplicates are harmless: a claim drops them.
REQUEUE_AFTER = timedelta(minutes=5)
# The delivery lease (docs/ARCHITECTURE.md, "Delivery lease"), unless the caller says otherwise
# (BROKER_DELIVERY_LEASE_SECONDS): an io task sending a job's outcome holds it, its heartbeat
# renews it every third of this; once it expired (the io worker was killed, or the task waits
# out a retry), the sweep sends the outcome again. A finished job whose delivery no io task
# claimed this long after it finished (its message was lost with the broker, or taken by a
# worker killed before the claim) is sent again too, and then at most once per this period.
DELIVERY_LEASE = timedelta(seconds=30)
REDELIVER_AFTER = DELIVERY_LEASE
# A running job is failed as timed_out this long past its (soft) time limit even under a live
# lease (its worker should have stopped it itself), and at once past it when its lease expired.
TIME_GRACE = timedelta(seconds=60)
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
    """The claim's verdict: run `snapshot` holding the lease `owner`, or nothing to run
    (`ended`: the job ended here and its outcome must be delivered)."""

    snapshot: JobSnapshot | None
    ended: bool = False
    owner: str | None = None


def worker_name(hostname: str | None) -> str:
    """`<node>:<pid>`, as shown in `Job.worker` (display only; the lease decides)."""
    return f"{_node(hostname)}:{os.getpid()}"


def lease_owner_id(hostname: str | None) -> str:
    """A fresh lease owner for one claim: `<node>:<pid>:<random>`, never reused (a restarted
    container has the same hostname and often the same pid)."""
    return f"{_node(hostname)[:100]}:{os.getpid()}:{secrets.token_hex(6)}"


def _node(hostname: str | None) -> str:
    return hostname or socket.gethostname()


def _worker_lease_live(job: Job, now: datetime) -> bool:
    """Whether a worker holds the job's lease at `now` (database clock)."""
    return (
        job.lease_owner is not None
        and job.lease_expires_at is not None
        and job.lease_expires_at > now
    )


def _release(job: Job) -> None:
    job.lease_owner = None
    job.lease_expires_at = None


def _end(
    session: Session,
    job: Job,
    to: JobStatus,
    error: tuple[str, str] | None = None,
    now: datetime | None = None,
) -> None:
    """Move an active job to a final state (stamped `now`, the database clock), drop its lease
    and emit its job.* event."""
    now = now or db_now(session)
    if error is not None:
        job.fail(*error, now=now)
    else:
        job.transition(to, now=now)
    _release(job)
    settle_ended(session, job)
    emit_job_event(session, job, _EVENT_FOR_STATUS[job.status])


def _locked(session: Session, job_id: int) -> Job | None:
    # SQLite ignores FOR UPDATE: its whole file is locked for writing instead.
    lock_for_write(session)
    # populate_existing: the row as committed now, never an identity-map copy read earlier.
    return session.get(Job, job_id, with_for_update=True, populate_existing=True)


def claim(
    session: Session, job_id: int, hostname: str | None, lease: timedelta = DEFAULT_LEASE
) -> Claim:
    """Lease the job to this worker attempt and snapshot its inputs, unless there is nothing
    to do: it is final, or running under another worker's live lease (a duplicate message)."""
    job = _locked(session, job_id)
    if job is None:
        logger.warning("job %s vanished before it ran", job_id)
        return Claim(None)
    if job.status in FINAL_STATUSES:
        logger.info("job %s already %s; redelivery ignored", job_id, job.status.value)
        return Claim(None)
    now = db_now(session)
    if job.status is JobStatus.RUNNING and _worker_lease_live(job, now):
        logger.info(
            "job %s is leased to %s until %s; duplicate message ignored",
            job_id,
            job.lease_owner,
            job.lease_expires_at,
        )
        return Claim(None)
    if job.cancel_requested:
        _end(session, job, JobStatus.CANCELLED, now=now)
        return Claim(None, ended=True)
    if job.status is JobStatus.RUNNING:
        if job.attempts >= MAX_ATTEMPTS:
            _end(session, job, JobStatus.FAILED, _worker_lost(job), now)
            return Claim(None, ended=True)
        logger.warning(
            "job %s: the lease of %s expired; taken over (attempt %d)",
            job_id,
            job.lease_owner or "the broker",
            job.attempts + 1,
        )
    # The attempt's start by the database clock: the sweep measures time limits with it.
    job.transition(JobStatus.RUNNING, now=now)
    owner = lease_owner_id(hostname)
    job.lease_owner = owner
    job.lease_expires_at = now + lease
    job.worker = worker_name(hostname)
    return Claim(
        JobSnapshot(
            id=job.id,
            user_id=job.user_id,
            params=dict(job.params),
            style_id=job.style_id,
            template_id=job.template_id,
            attempts=job.attempts,
        ),
        owner=owner,
    )


def _worker_lost(job: Job) -> tuple[str, str]:
    return "worker_lost", f"its worker was lost {job.attempts} times (lease expired)"


def renew_lease(session: Session, job_id: int, owner: str, lease: timedelta) -> bool:
    """The heartbeat: extend our lease; False when it is no longer ours (the job was re-queued
    and claimed elsewhere, or ended): the caller abandons the job without writing anything."""
    now = db_now(session)
    renewed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.lease_owner == owner)
        .values(lease_expires_at=now + lease)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(renewed, "rowcount", 0))


def hand_back(session: Session, job_id: int, owner: str) -> bool:
    """Give a running job back without an outcome (its worker is shutting down, a checkpoint
    saved): the lease ends now, so the requeued message's next claim takes it over at once.
    A hand-back is not a lost worker: the claim it gives back is uncounted, so deploys during
    a long training never use up its `MAX_ATTEMPTS`. False when the lease is no longer
    `owner`'s."""
    now = db_now(session)
    handed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.lease_owner == owner)
        # No owner: the heartbeat's last renewal cannot take it back.
        .values(lease_owner=None, lease_expires_at=now, attempts=Job.attempts - 1)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(handed, "rowcount", 0))


def dispatchable_kind(session: Session, job_id: int) -> JobKind | None:
    """The kind of a job whose task should be published (queued, or running and re-queued after
    its lease expired); None when it needs none."""
    job = session.get(Job, job_id)
    if job is None or job.status not in ACTIVE_STATUSES:
        return None
    return job.kind


def mark_dispatched(
    session: Session, job_id: int, requeue_after: timedelta = REQUEUE_AFTER
) -> None:
    """The job's task reached the broker: lease it to the broker (no owner) for `requeue_after`,
    unless a worker claimed it meanwhile (its lease is left alone)."""
    job = _locked(session, job_id)
    if job is None:
        return
    job.dispatched_at = utcnow()
    if job.status in ACTIVE_STATUSES and job.lease_owner is None:
        job.lease_expires_at = db_now(session) + requeue_after


def record_progress(
    session: Session,
    job_id: int,
    fraction: float,
    owner: str | None = None,
    lease: timedelta = DEFAULT_LEASE,
) -> bool | None:
    """Store progress in [0, 1], renewing `owner`'s lease; whether a cancel was asked (None: the
    job is gone, or no longer ours)."""
    job = _locked(session, job_id)
    if job is None:
        return None
    if owner is not None:
        if job.status is not JobStatus.RUNNING or job.lease_owner != owner:
            return None
        job.lease_expires_at = db_now(session) + lease
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
    owner: str | None = None,
) -> JobStatus | None:
    """Record the outcome under the row lock and emit its job.* event; the final status.

    Only while `owner` still holds the lease (checked in the UPDATE's WHERE): None when it no
    longer does, and nothing is written: the job was re-queued and taken over meanwhile, or
    ended by the sweep or another claim, which queued its delivery themselves (the caller must
    not queue a second one)."""
    if owner is not None:
        held = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.lease_owner == owner)
            .values(lease_owner=None, lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )
        if not getattr(held, "rowcount", 0):
            job = _locked(session, job_id)
            if job is not None and job.status in FINAL_STATUSES:
                # Cancelled or failed by the sweep (or a claim) meanwhile: that verdict stands,
                # and whoever decided it delivers it.
                logger.warning("job %s: already %s; outcome dropped", job_id, job.status.value)
            else:
                logger.warning(
                    "job %s: lease lost to %s; outcome dropped", job_id, job and job.lease_owner
                )
            return None
    job = _locked(session, job_id)
    assert job is not None
    if job.status is not JobStatus.RUNNING:
        return job.status
    now = db_now(session)
    if job.cancel_requested and job.user_id is None:
        # /forget detached it while it ran (`domain.privacy`): whatever it produced is kept on
        # the row only so that delivery deletes it (`discard_detached_job`); it ends cancelled.
        if outcome is not None:
            job.result_blobs = outcome.result_blobs
        job.transition(JobStatus.CANCELLED, now=now)
    elif cancelled:
        job.transition(JobStatus.CANCELLED, now=now)
    elif error is not None:
        job.fail(*error, now=now)
    else:
        assert outcome is not None
        job.result_blobs = outcome.result_blobs
        job.result_meta = outcome.result_meta
        job.transition(JobStatus.SUCCEEDED, now=now)
    _release(job)
    settle_ended(session, job)
    emit_job_event(session, job, _EVENT_FOR_STATUS[job.status])
    return job.status


def fail_unclaimed(session: Session, job_id: int, code: str, detail: str) -> JobStatus | None:
    """Fail a job before it ran (its worker cannot build the models); None if already final or
    running under another worker's live lease (that worker's models are fine)."""
    job = _locked(session, job_id)
    if job is None or job.status in FINAL_STATUSES:
        return None
    now = db_now(session)
    if job.status is JobStatus.RUNNING and _worker_lease_live(job, now):
        return None
    if job.status is JobStatus.QUEUED:
        job.transition(JobStatus.RUNNING, now=now)
    _end(session, job, JobStatus.FAILED, (code, detail), now)
    return job.status


def record_pose_map(session: Session, job_id: int, key: str) -> None:
    """Remember the skeleton map extracted for a job (a retry reuses it; /forget deletes it)."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is not None:
        # A new dict: the JSON column only notices assignment.
        job.params = {**(job.params or {}), "pose_map_blob": key}
