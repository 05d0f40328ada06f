"""How a gpu task runs its job: build the models, claim, run with throttled progress and
cancellation, record the outcome, then hand delivery to the io queue.

The job rules (claiming, idempotence, outcomes) are `domain.lifecycle`; this module is the
Celery side: time limits, the worker's models, and publishing after each commit."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NoReturn

from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded
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
    task: Task,
    job_id: int,
    work: Work,
    prepare: Callable[[WorkerContext], object] | None = None,
    *,
    needs_engine: bool = True,
) -> JobStatus | None:
    """Claim, run and record one gpu job; delivery is queued on io afterwards.

    The engine is built before claiming (a warm worker has it already, `tasks.warm`). A worker
    that cannot build it fails no job: the message goes back to the queue for a healthy worker
    and this worker stops consuming. `prepare` builds an optional model of one job kind (the HD
    upscaler): when its weights are missing, the job fails with an operator error."""
    ctx = get_context()
    if needs_engine:
        try:
            _build_engine(ctx)
        except Exception as exc:
            # Whatever stops the build stops this worker, never the job (it may be running
            # elsewhere, or wait for a healthy worker).
            _stop_consuming(ctx, job_id, exc)
    if prepare is not None:
        try:
            # Before claiming, so this worker never holds a lease on a job it cannot run.
            prepare(ctx)
        except (AppError, FaceChainError) as exc:
            logger.warning("job %s: %s", job_id, exc)
            return _fail_unclaimed(ctx, job_id, exc.code, str(exc))

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


def _stop_consuming(ctx: WorkerContext, job_id: int, exc: BaseException) -> NoReturn:
    """Requeue this message and shut this worker down (warm): it cannot run any gpu job."""
    from celery.worker import state as worker_state

    logger.error(
        "job %s: the engine cannot be built (%s: %s); message requeued, this worker stops "
        "consuming",
        job_id,
        type(exc).__name__,
        exc,
    )
    ctx.reset_models()
    # The consumer loop checks this after the task and shuts the worker down (exit status 1).
    worker_state.should_stop = 1
    raise Reject(f"engine unavailable: {exc}", requeue=True)


def _fail_unclaimed(ctx: WorkerContext, job_id: int, code: str, detail: str) -> JobStatus | None:
    status = ctx.db.call(lifecycle.fail_unclaimed, job_id, code, detail)
    if status is not None:
        send_io(ctx.celery, "delivery.send_result", job_id)
    return status
