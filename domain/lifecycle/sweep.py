"""The periodic sweep: re-queue jobs whose lease expired or whose message was lost, fail
those past their time limit or out of attempts, and find outcomes to deliver again."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from db.base import db_now, lock_for_write
from db.models import ACTIVE_STATUSES, FINAL_STATUSES, Job, JobKind, JobStatus
from db.repositories.jobs import JobRepository
from domain import outbox
from domain.lifecycle.leases import (
    MAX_ATTEMPTS,
    MAX_DELIVERY_ATTEMPTS,
    REDELIVER_AFTER,
    TIME_GRACE,
    _end,
    _worker_lost,
)

logger = logging.getLogger(__name__)


@dataclass
class SweepPlan:
    """What one sweep decided: jobs re-queued (published after the commit, through the outbox),
    jobs it ended (failed or cancelled; their outcome to deliver), and finished jobs whose
    outcome to deliver again."""

    resend: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    undelivered: list[int] = field(default_factory=list)


def sweep(
    session: Session,
    *,
    outbox_grace: timedelta,
    time_limit: timedelta,
    train_time_limit: timedelta | None = None,
    redeliver_after: timedelta = REDELIVER_AFTER,
    limit: int = 100,
) -> SweepPlan:
    """Re-queue jobs whose lease expired (and those never published), end the ones out of
    attempts, past their time limit or cancelled with nobody left to stop them, and find
    finished jobs whose result never reached the user.

    Rows are locked `FOR UPDATE SKIP LOCKED`: a job a worker is finishing right now is skipped,
    and a final state committed meanwhile is seen, never overwritten. The jobs to publish go to
    the session's outbox (`transact` publishes them after the commit)."""
    # On SQLite (no row locks) the sweep holds the write lock from its first read: a worker's
    # outcome is either committed before it reads or waits for its commit, never overwritten.
    lock_for_write(session)
    now = db_now(session)
    plan = SweepPlan()
    # The outbox: committed, never published (the publisher died or the broker was down).
    plan.resend += [j.id for j in JobRepository(session).undispatched(outbox_grace, limit)]

    def allowed(job: Job) -> timedelta:
        # Style trainings legitimately run for hours; they have their own limit.
        if job.kind is JobKind.TRAINING and train_time_limit is not None:
            return train_time_limit
        return time_limit

    def timed_out(job: Job, margin: timedelta) -> bool:
        # Only an attempt a worker holds (or held until it died) can run out of time: a job
        # re-queued or handed back (no owner) waits for a worker, and `started_at` is still its
        # previous attempt's start; its next claim starts the clock again.
        return (
            job.lease_owner is not None
            and job.started_at is not None
            and job.started_at < now - allowed(job) - margin
        )

    # Past the time limit and its grace with a live lease (a worker the limit did not stop).
    shortest = min(time_limit, train_time_limit or time_limit)
    for job in session.scalars(
        select(Job)
        .where(
            Job.status == JobStatus.RUNNING,
            Job.lease_owner.is_not(None),
            Job.started_at < now - shortest - TIME_GRACE,
        )
        .order_by(Job.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ):
        if timed_out(job, TIME_GRACE):
            _end(
                session,
                job,
                JobStatus.FAILED,
                ("timed_out", f"running for more than {allowed(job)}"),
                now,
            )
            plan.failed.append(job.id)
    # Expired leases: a worker that stopped renewing, or a message no worker ever claimed.
    for job in session.scalars(
        select(Job)
        .where(
            Job.status.in_(ACTIVE_STATUSES),
            or_(
                Job.lease_expires_at < now,
                # Running since before leases existed (or a row written by hand).
                (Job.status == JobStatus.RUNNING) & Job.lease_expires_at.is_(None),
            ),
        )
        .order_by(Job.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ):
        if job.status not in ACTIVE_STATUSES or job.id in plan.failed:
            continue
        if job.status is JobStatus.RUNNING and job.cancel_requested:
            # Its worker is gone, so nobody else will record the cancellation.
            _end(session, job, JobStatus.CANCELLED, now=now)
            plan.failed.append(job.id)
        elif job.status is JobStatus.RUNNING and timed_out(job, timedelta(0)):
            # Its worker ran the whole time limit and is gone (the hard limit ends the process):
            # another attempt would only run out of time again.
            _end(session, job, JobStatus.FAILED, ("timed_out", f"ran out of {allowed(job)}"), now)
            plan.failed.append(job.id)
        elif job.status is JobStatus.RUNNING and job.attempts >= MAX_ATTEMPTS:
            _end(session, job, JobStatus.FAILED, _worker_lost(job), now)
            plan.failed.append(job.id)
        else:
            if job.lease_owner is not None:
                logger.warning(
                    "job %s: the lease of %s expired at %s; re-queued",
                    job.id,
                    job.lease_owner,
                    job.lease_expires_at,
                )
            # Nobody's now: the old owner's next heartbeat finds it gone. The expiry stays in
            # the past until the publish is confirmed (`mark_dispatched`), so a failed publish
            # is retried by the next sweep.
            job.lease_owner = None
            plan.resend.append(job.id)
    # Every final outcome the chat was not told of: an album, a failure, or a cancellation the
    # sweep, a claim or an admin recorded (the user's own Cancel button counts as told).
    # A delivery is lost once its lease expired (the io task stopped renewing it), or when no
    # io task claimed it within `redeliver_after` of the job's end.
    undelivered = session.scalars(
        select(Job)
        .where(
            Job.status.in_(FINAL_STATUSES),
            Job.chat_id.is_not(None),
            Job.delivered_at.is_(None),
            Job.delivery_error.is_(None),
            or_(
                Job.delivery_lease_expires_at < now,
                Job.delivery_lease_expires_at.is_(None)
                & (Job.finished_at <= now - redeliver_after),
            ),
        )
        .order_by(Job.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for job in undelivered:
        # Bounded: a delivery that keeps failing is given up and recorded, never re-sent forever.
        if job.delivery_attempts >= MAX_DELIVERY_ATTEMPTS:
            job.delivery_error = f"gave up after {job.delivery_attempts} attempts"
        else:
            # Nobody's now, and not sent again before another lease period passed unclaimed.
            job.delivery_owner = None
            job.delivery_lease_expires_at = now + redeliver_after
            plan.undelivered.append(job.id)
    # Jobs /forget detached that ended but were never discarded (their delivery message was
    # lost): the delivery task deletes them with whatever they produced.
    plan.undelivered += session.scalars(
        select(Job.id)
        .where(
            Job.status.in_(FINAL_STATUSES),
            Job.user_id.is_(None),
            Job.cancel_requested.is_(True),
            Job.finished_at <= now - redeliver_after,
        )
        .order_by(Job.id)
        .limit(limit)
    ).all()
    plan.resend = list(dict.fromkeys(plan.resend))
    outbox.pending(session).jobs.extend(plan.resend)
    return plan
