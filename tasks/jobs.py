"""How a gpu task runs its job: build the models, claim, run with throttled progress and
cancellation, record the outcome, then hand delivery to the io queue.

The job rules (claiming, idempotence, outcomes) are `domain.lifecycle`; this module is the
Celery side: time limits, the worker's models, and publishing after each commit."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import KombuError
from sqlalchemy.exc import SQLAlchemyError

from core.errors import AppError
from db.models import JobStatus
from domain import lifecycle
from domain.lifecycle import JobOutcome, JobSnapshot
from domain.outbox import transact
from facechain.errors import FaceChainError
from tasks.context import WorkerContext, get_context
from tasks.dispatch import send_io

logger = logging.getLogger(__name__)

# Progress rows are written at most this often; status-message edits less often still,
# to stay well inside Telegram's edit rate.
PROGRESS_DB_INTERVAL_S = 1.0
PROGRESS_EDIT_INTERVAL_S = 3.0

__all__ = ["JobCancelled", "JobOutcome", "JobSnapshot", "ProgressReporter", "run_gpu_job"]


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
            cancelled = self.ctx.db.call(lifecycle.record_progress, self.job_id, fraction)
        except SQLAlchemyError as exc:
            logger.warning("job %s: progress not recorded (%s)", self.job_id, type(exc).__name__)
            return
        if cancelled is None:
            return
        self._cancelled = cancelled
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
                self._cancelled = self.ctx.db.call(lifecycle.cancel_requested, self.job_id)
            except SQLAlchemyError as exc:
                # Keep the last answer; the next check reads again.
                logger.warning(
                    "job %s: progress not recorded (%s)", self.job_id, type(exc).__name__
                )
        return self._cancelled


Work = Callable[[WorkerContext, JobSnapshot, ProgressReporter], JobOutcome]


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

    claimed = ctx.db.call(lifecycle.claim, job_id, getattr(task.request, "hostname", None))
    if claimed.ended:
        # Sent only after the commit, so the io worker reads the final row.
        send_io(ctx.celery, "delivery.send_result", job_id)
    if claimed.snapshot is None:
        return None
    reporter = ProgressReporter(ctx, job_id)
    outcome: JobOutcome | None = None
    error: tuple[str, str] | None = None
    cancelled = False
    started = time.monotonic()
    try:
        outcome = work(ctx, claimed.snapshot, reporter)
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
    status = transact(ctx.db, ctx.publisher, lifecycle.finish, job_id, outcome, error, cancelled)
    logger.info("job %s %s in %.1fs", job_id, status.value, time.monotonic() - started)
    try:
        send_io(ctx.celery, "delivery.send_result", job_id)
    except (KombuError, OSError) as exc:
        # The outcome is committed; the sweep re-queues deliveries that never happened.
        logger.warning("job %s: delivery not queued now, the sweep will (%s)", job_id, exc)
    return status


def _fail_unclaimed(ctx: WorkerContext, job_id: int, code: str, detail: str) -> JobStatus | None:
    status = ctx.db.call(lifecycle.fail_unclaimed, job_id, code, detail)
    if status is not None:
        send_io(ctx.celery, "delivery.send_result", job_id)
    return status
