"""The lifecycle every gpu job shares: claim under a row lock, run with progress and
cancellation, record the outcome, then hand delivery to the io queue.

A job is idempotent: a redelivered message whose job is already finished does nothing, and a
message for a job that is running elsewhere is a redelivery after a crash (attempts counts)."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import KombuError
from sqlalchemy.exc import SQLAlchemyError

from db.base import utcnow
from db.models import FINAL_STATUSES, Job, JobStatus
from facechain.errors import FaceChainError
from service.errors import AppError
from tasks.context import WorkerContext, get_context
from tasks.dispatch import send_io

logger = logging.getLogger(__name__)

# Progress rows are written at most this often; status-message edits less often still,
# to stay well inside Telegram's edit rate.
PROGRESS_DB_INTERVAL_S = 1.0
PROGRESS_EDIT_INTERVAL_S = 3.0
MAX_ATTEMPTS = 3
# A running job whose row has not been touched (progress writes) for this long lost its worker.
STALE_AFTER = timedelta(minutes=3)


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


class JobCancelled(Exception):
    """Raised by the cancel check when the user asked to stop."""


class ProgressReporter:
    """Throttled progress writes plus a cancellation check, called from the engine's loop."""

    def __init__(self, ctx: WorkerContext, job_id: int) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self._last_db = 0.0
        self._last_edit = 0.0
        self._cancelled = False

    def __call__(self, step: int, total: int) -> None:
        self.report(step / total if total else 0.0)

    def report(self, fraction: float) -> None:
        """Record progress in [0, 1] (throttled)."""
        now = time.monotonic()
        if now - self._last_db < PROGRESS_DB_INTERVAL_S and fraction < 1.0:
            return
        self._last_db = now
        # Progress is best effort: a database or broker blip must not kill a generation that
        # is otherwise fine (its outcome is recorded by `finish`, which does not swallow errors).
        try:
            with self.ctx.db.session() as session:
                job = session.get(Job, self.job_id)
                if job is None:
                    return
                job.progress = max(0.0, min(1.0, float(fraction)))
                self._cancelled = job.cancel_requested
        except SQLAlchemyError as exc:
            logger.warning("job %s: progress not recorded (%s)", self.job_id, type(exc).__name__)
            return
        if now - self._last_edit >= PROGRESS_EDIT_INTERVAL_S:
            self._last_edit = now
            try:
                send_io(self.ctx.celery, "delivery.progress", self.job_id)
            except (KombuError, OSError) as exc:
                logger.warning("job %s: progress edit not queued (%s)", self.job_id, exc)

    def cancelled(self) -> bool:
        """Whether the user asked to cancel (read fresh at most once a second)."""
        now = time.monotonic()
        if now - self._last_db >= PROGRESS_DB_INTERVAL_S:
            self._last_db = now
            try:
                with self.ctx.db.session() as session:
                    job = session.get(Job, self.job_id)
                    self._cancelled = bool(job and job.cancel_requested)
            except SQLAlchemyError as exc:
                # Keep the last answer; the next check reads again.
                logger.warning(
                    "job %s: progress not recorded (%s)", self.job_id, type(exc).__name__
                )
        return self._cancelled


Work = Callable[[WorkerContext, JobSnapshot, ProgressReporter], JobOutcome]


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


def _node(hostname: str | None) -> str:
    return hostname or socket.gethostname()


def claim(ctx: WorkerContext, job_id: int, hostname: str | None) -> JobSnapshot | None:
    """Move the job to running and snapshot its inputs; None when there is nothing to do."""
    ended_here = False
    with ctx.db.session() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            logger.warning("job %s vanished before it ran", job_id)
            return None
        if job.status in FINAL_STATUSES:
            logger.info("job %s already %s; redelivery ignored", job_id, job.status.value)
            return None
        if job.status is JobStatus.RUNNING and owner_alive(job, hostname):
            logger.info("job %s is running on %s; duplicate message ignored", job_id, job.worker)
            return None
        if job.cancel_requested:
            job.transition(JobStatus.CANCELLED)
            ended_here = True
        elif job.status is JobStatus.RUNNING and job.attempts >= MAX_ATTEMPTS:
            job.fail("internal", f"gave up after {job.attempts} attempts")
            ended_here = True
        else:
            job.transition(JobStatus.RUNNING)
            job.worker = f"{_node(hostname)}:{os.getpid()}"
            snapshot = JobSnapshot(
                id=job.id,
                user_id=job.user_id,
                params=dict(job.params),
                style_id=job.style_id,
                template_id=job.template_id,
                attempts=job.attempts,
            )
    if ended_here:
        # Sent only after the commit, so the io worker reads the final row.
        send_io(ctx.celery, "delivery.send_result", job_id)
        return None
    return snapshot


def finish(
    ctx: WorkerContext,
    job_id: int,
    outcome: JobOutcome | None,
    error: tuple[str, str] | None,
    cancelled: bool = False,
) -> JobStatus:
    """Record the outcome under a row lock; returns the final status."""
    with ctx.db.session() as session:
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
        status = job.status
        event = {
            JobStatus.SUCCEEDED: "job.succeeded",
            JobStatus.FAILED: "job.failed",
            JobStatus.CANCELLED: "job.cancelled",
        }[status]
        delivery_ids = emit_job_event(session, job, event)
    from tasks.webhooks import enqueue_deliveries

    enqueue_deliveries(ctx.celery, delivery_ids)
    return status


def emit_job_event(session: Any, job: Job, event: str) -> list[int]:
    """Record outgoing webhook deliveries for a job event (published after commit)."""
    from tasks.webhooks import emit_event, job_event_payload

    return list(emit_event(session, event, job_event_payload(job)))


def _build_engine(ctx: WorkerContext) -> object:
    return ctx.engine


def run_gpu_job(
    task: Task, job_id: int, work: Work, prepare: Callable[[WorkerContext], object] = _build_engine
) -> JobStatus | None:
    """Claim, run and record one gpu job; delivery is queued on io afterwards.

    `prepare` builds the resident models the work needs (default: the engine)."""
    ctx = get_context()
    try:
        # Build the models before claiming, so a missing-weights worker fails the job cleanly
        # and model loading time never counts as a stalled running job.
        prepare(ctx)
    except AppError as exc:
        return _fail_unclaimed(ctx, job_id, exc.code, str(exc))
    except Exception as exc:
        code = getattr(exc, "code", "engine_unavailable")
        logger.exception("models for job %s could not be built", job_id)
        return _fail_unclaimed(ctx, job_id, code, str(exc))

    snapshot = claim(ctx, job_id, getattr(task.request, "hostname", None))
    if snapshot is None:
        return None
    reporter = ProgressReporter(ctx, job_id)
    outcome: JobOutcome | None = None
    error: tuple[str, str] | None = None
    cancelled = False
    started = time.monotonic()
    try:
        outcome = work(ctx, snapshot, reporter)
    except JobCancelled:
        cancelled = True
    except SoftTimeLimitExceeded:
        error = ("timed_out", "soft time limit exceeded")
    except Exception as exc:  # the task is the boundary: every failure becomes a job error
        # Only our typed errors carry user-facing codes (SQLAlchemy's `code` is a docs link id).
        code = getattr(exc, "code", None) if isinstance(exc, AppError | FaceChainError) else None
        if code == "cancelled":
            cancelled = True
        elif isinstance(code, str):
            error = (code, str(exc))
            logger.info("job %s failed: %s (%s)", job_id, code, exc)
        else:
            logger.exception("job %s crashed", job_id)
            error = ("internal", f"{type(exc).__name__}: {exc}")
    status = finish(ctx, job_id, outcome, error, cancelled)
    logger.info("job %s %s in %.1fs", job_id, status.value, time.monotonic() - started)
    try:
        send_io(ctx.celery, "delivery.send_result", job_id)
    except (KombuError, OSError) as exc:
        # The outcome is committed; the sweep re-queues deliveries that never happened.
        logger.warning("job %s: delivery not queued now, the sweep will (%s)", job_id, exc)
    return status


def _fail_unclaimed(ctx: WorkerContext, job_id: int, code: str, detail: str) -> JobStatus | None:
    with ctx.db.session() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.status in FINAL_STATUSES:
            return None
        if job.status is JobStatus.QUEUED:
            job.transition(JobStatus.RUNNING)
        job.fail(code, detail)
        status = job.status
    send_io(ctx.celery, "delivery.send_result", job_id)
    return status
