"""A job's life on the workers: claimed under a lease, running with progress, heartbeat and
cancellation, finished, delivered; and the sweep that re-queues jobs whose lease expired.

One mechanism decides who may work on a job: its lease (`Job.lease_owner`, `lease_expires_at`,
compared with the database's clock). A published job is leased to the broker (no owner) for
`REQUEUE_AFTER`; a claim leases it to one worker attempt for `lease` (60 s by default), which
that worker's heartbeat renews. A message for a job under a live worker lease is a duplicate and
is dropped; a job whose lease expired (its worker died, or its message was lost) is re-queued by
the sweep and taken over by whichever worker claims it next (`attempts` counts the claims).
Results are written only while the lease is still the writer's. Every change happens under the
job's row lock; the io work (sending results, progress edits) is the caller's, after the commit.
See docs/ARCHITECTURE.md, "Job lease"."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from db.base import db_now, lock_for_write, utcnow
from db.models import ACTIVE_STATUSES, FINAL_STATUSES, Job, JobKind, JobStatus, Style, User
from db.repositories.jobs import JobRepository
from domain import outbox
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


# ---- the sweep ----


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
    # A worker took it (it ran): a cancel then keeps its charge (`billing.gives_back`).
    started: bool = False
    # Send calls of the outcome that returned (a second delivery goes on after them), and
    # whether another io task holds the delivery lease right now (send nothing).
    step: int = 0
    busy: bool = False


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
        started=job.started_at is not None,
        step=job.delivery_step,
    )


def start_delivery(
    session: Session,
    job_id: int,
    owner: str | None = None,
    lease: timedelta = DELIVERY_LEASE,
) -> Delivery | None:
    """Claim the delivery of a finished job's outcome for `owner` (the io task) and count one
    send; a snapshot of it; None when the job is gone.

    `Delivery.done` says the chat already has it (or its delivery was given up), `busy` that
    another io task holds a live delivery lease: send nothing in either case. `step` says how
    many of its send calls a former delivery recorded as returned."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        return None
    busy = False
    if job.status in FINAL_STATUSES and not job.delivery_done:
        now = db_now(session)
        busy = (
            owner is not None
            and job.delivery_owner not in (None, owner)
            and job.delivery_lease_expires_at is not None
            and job.delivery_lease_expires_at > now
        )
        if not busy:
            job.delivery_attempts += 1
            if owner is not None:
                job.delivery_owner = owner
                job.delivery_lease_expires_at = now + lease
    d = delivery(session, job_id)
    if d is not None:
        d.busy = busy
    return d


def renew_delivery(session: Session, job_id: int, owner: str, lease: timedelta) -> bool:
    """The delivery's heartbeat: extend `owner`'s lease; False when it is no longer theirs."""
    now = db_now(session)
    renewed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.delivery_owner == owner, Job.delivered_at.is_(None))
        .values(delivery_lease_expires_at=now + lease)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(renewed, "rowcount", 0))


def record_delivery_step(session: Session, job_id: int, owner: str, step: int) -> bool:
    """`step` send calls of the outcome returned: a later delivery starts after them. False
    when the lease is no longer `owner`'s (another io task took the delivery over)."""
    recorded = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.delivery_owner == owner, Job.delivery_step < step)
        .values(delivery_step=step)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(recorded, "rowcount", 0))


def mark_delivered(session: Session, job_id: int) -> None:
    """The outcome reached the chat (or there is no chat to reach): record when."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is not None and job.status in FINAL_STATUSES and job.delivered_at is None:
        job.delivered_at = utcnow()
        job.delivery_owner = None
        job.delivery_lease_expires_at = None


def mark_undeliverable(session: Session, job_id: int, error: str) -> None:
    """Telegram refused the outcome for good (or the attempts ran out): record why."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is not None and not job.delivery_done:
        job.delivery_error = error[:2000]
        job.delivery_owner = None
        job.delivery_lease_expires_at = None
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
        or job.delivery_step > 0
    ):
        return None
    return PosePreview(job.chat_id, _language(session, job), key)
