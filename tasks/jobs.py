"""How a gpu task runs its job: build the models, claim its lease, run with throttled progress,
a heartbeat and cancellation, record the outcome, then hand delivery to the io queue.

The job rules (claiming, idempotence, outcomes) are `domain.lifecycle`; this module is the
Celery side: time limits, the worker's models, and publishing after each commit."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import NoReturn

from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from kombu.exceptions import KombuError
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from core.errors import AppError
from db.models import JobStatus
from domain import lifecycle
from domain.blobs import release
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
# Recording a finished job's outcome waits out a database that cannot be reached (a restart, a
# failover, a network blip) with these pauses, for at most one lease length: the work is done
# and its files are stored, so waiting is far cheaper than running the job again.
FINISH_RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0)
# Errors that say the database is out of reach, not that the statement is wrong.
UNREACHABLE = (OperationalError, InterfaceError)

__all__ = [
    "JobCancelled",
    "JobOutcome",
    "JobSnapshot",
    "Lease",
    "ProgressReporter",
    "run_gpu_job",
]


class JobCancelled(Exception):
    """Raised by the cancel check when the user asked to stop."""


class Lease:
    """This attempt's lease on its job, renewed by a heartbeat thread every third of its length.

    The thread keeps the lease through phases that report no progress (model and LoRA loading,
    pose annotation, export); `lost` turns true once a renewal finds the lease taken over (the
    job was re-queued after this worker stalled), and the work then stops at its next cancel
    check without writing anything. A worker killed outright stops renewing, and the sweep
    re-queues its job once the lease expires."""

    def __init__(
        self,
        ctx: WorkerContext,
        job_id: int,
        owner: str,
        *,
        length: timedelta | None = None,
        renew_fn: Callable[[Session, int, str, timedelta], bool] = lifecycle.renew_lease,
    ) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self.owner = owner
        self.length = length or timedelta(seconds=ctx.config.broker.job_lease_seconds)
        # The job's lease by default; the delivery lease for an io task sending its outcome.
        self._renew_fn = renew_fn
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._renewed = time.monotonic()
        self._thread: threading.Thread | None = None

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    @property
    def interval(self) -> float:
        return self.length.total_seconds() / 3

    def mark_renewed(self, still_ours: bool) -> None:
        """A renewal happened elsewhere (a progress write); `still_ours` is its verdict."""
        if still_ours:
            self._renewed = time.monotonic()
        else:
            self._lose()

    def _lose(self) -> None:
        if not self._lost.is_set():
            logger.warning("job %s: lease %s lost; abandoning the job", self.job_id, self.owner)
        self._lost.set()

    def renew(self) -> None:
        """One heartbeat (a database blip is logged; the next beat tries again)."""
        try:
            ours = self.ctx.db.call(self._renew_fn, self.job_id, self.owner, self.length)
        except SQLAlchemyError as exc:
            logger.warning("job %s: lease not renewed (%s)", self.job_id, type(exc).__name__)
            return
        self.mark_renewed(ours)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval / 4):
            if time.monotonic() - self._renewed >= self.interval:
                self.renew()
            if self.lost:
                return

    def __enter__(self) -> Lease:
        self._thread = threading.Thread(
            target=self._beat, name=f"lease-{self.job_id}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            # A beat stuck on an unreachable database must not hold the task up; a renewal that
            # lands after `finish` matches no row (the lease is released).
            self._thread.join(timeout=5)


class ProgressReporter:
    """Throttled progress writes plus a cancellation check, called from the engine's loop.

    With a `lease`, each progress write renews it too, and a lost lease reads as a cancel."""

    def __init__(self, ctx: WorkerContext, job_id: int, lease: Lease | None = None) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self.lease = lease
        self._last_db = 0.0
        self._last_edit = 0.0
        self._cancelled = False

    def __call__(self, step: int, total: int) -> None:
        self.report(step / total if total else 0.0)

    @property
    def lease_lost(self) -> bool:
        """Whether another worker took the job over (stop, and write nothing)."""
        return self.lease is not None and self.lease.lost

    def still_ours(self) -> bool:
        """Renew the lease now; whether this attempt still holds it (True without a lease)."""
        if self.lease is None:
            return True
        self.lease.renew()
        return not self.lease.lost

    def report(self, fraction: float) -> None:
        """Record progress in [0, 1] (throttled)."""
        now = time.monotonic()
        if now - self._last_db < PROGRESS_DB_INTERVAL_S and fraction < 1.0:
            return
        self._last_db = now
        # Progress is best effort: a database or broker blip must not kill a generation that
        # is otherwise fine (its outcome is recorded by `finish`, which does not swallow errors).
        lease = self.lease
        try:
            if lease is None:
                cancelled = self.ctx.db.call(lifecycle.record_progress, self.job_id, fraction)
            else:
                cancelled = self.ctx.db.call(
                    lifecycle.record_progress, self.job_id, fraction, lease.owner, lease.length
                )
                lease.mark_renewed(cancelled is not None)
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
        """Whether the user asked to cancel, or the lease was lost (read fresh at most once a
        second)."""
        if self.lease_lost:
            return True
        if time.monotonic() - self._last_db >= PROGRESS_DB_INTERVAL_S:
            self._read_cancel("progress not recorded")
        return self._cancelled

    def cancelled_now(self) -> bool:
        """Whether the job was cancelled, read fresh (the last check after the work is done).

        A database out of reach keeps the last answer: the work is done, and `finish` waits
        for the database to record its outcome."""
        if self.lease_lost:
            return True
        self._read_cancel("cancel check skipped")
        return self._cancelled

    def _read_cancel(self, failure: str) -> None:
        # A database blip keeps the last answer; the next check reads again.
        self._last_db = time.monotonic()
        try:
            self._cancelled = self.ctx.db.call(lifecycle.cancel_requested, self.job_id)
        except SQLAlchemyError as exc:
            logger.warning("job %s: %s (%s)", self.job_id, failure, type(exc).__name__)


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

    lease_length = timedelta(seconds=ctx.config.broker.job_lease_seconds)
    claimed = transact(
        ctx.db,
        ctx.publisher,
        lifecycle.claim,
        job_id,
        getattr(task.request, "hostname", None),
        lease_length,
    )
    if claimed.ended:
        # Sent only after the commit, so the io worker reads the final row.
        send_io(ctx.celery, "delivery.send_result", job_id)
    if claimed.snapshot is None or claimed.owner is None:
        return None
    outcome: JobOutcome | None = None
    error: tuple[str, str] | None = None
    cancelled = False
    started = time.monotonic()
    with Lease(ctx, job_id, claimed.owner) as lease:
        reporter = ProgressReporter(ctx, job_id, lease)
        try:
            outcome = work(ctx, claimed.snapshot, reporter)
        except JobCancelled:
            cancelled = True
        except SoftTimeLimitExceeded:
            error = ("timed_out", "soft time limit exceeded")
        except Exception as exc:  # the task is the boundary: every failure becomes a job error
            # Only our typed errors carry user-facing codes (SQLAlchemy's `code` is a docs id).
            code = (
                getattr(exc, "code", None) if isinstance(exc, AppError | FaceChainError) else None
            )
            if code == "cancelled":
                cancelled = True
            elif lease.lost:
                pass
            elif isinstance(exc, UNREACHABLE):
                # Not the job's fault: record nothing; once the lease expires the sweep
                # re-queues it (a counted attempt) and a worker runs it again.
                logger.warning(
                    "job %s: the database is out of reach (%s); it runs again once its lease "
                    "expires",
                    job_id,
                    type(exc).__name__,
                )
                return None
            elif isinstance(code, str):
                error = (code, str(exc))
                logger.info("job %s failed: %s (%s)", job_id, code, exc)
            else:
                logger.exception("job %s crashed", job_id)
                error = ("internal", f"{type(exc).__name__}: {exc}")
    if lease.lost:
        # Re-queued and claimed by another worker: its outcome, not ours, reaches the user.
        logger.warning(
            "job %s: abandoned after %.1fs (lease lost)", job_id, time.monotonic() - started
        )
        return None
    status = _finish(ctx, job_id, outcome, error, cancelled, claimed.owner, lease_length)
    if status is None:
        # Taken over, or ended by the sweep meanwhile: its outcome and delivery are not ours.
        logger.warning(
            "job %s: abandoned after %.1fs (lease lost)", job_id, time.monotonic() - started
        )
        _drop_outcome(ctx, job_id, outcome)
        return None
    logger.info("job %s %s in %.1fs", job_id, status.value, time.monotonic() - started)
    try:
        send_io(ctx.celery, "delivery.send_result", job_id)
    except (KombuError, OSError) as exc:
        # The outcome is committed; the sweep re-queues deliveries that never happened.
        logger.warning("job %s: delivery not queued now, the sweep will (%s)", job_id, exc)
    return status


def _finish(
    ctx: WorkerContext,
    job_id: int,
    outcome: JobOutcome | None,
    error: tuple[str, str] | None,
    cancelled: bool,
    owner: str,
    patience: timedelta,
) -> JobStatus | None:
    """`lifecycle.finish`, waiting out a database that cannot be reached for up to `patience`
    (one lease length: past it the sweep may have handed the job to another worker, which the
    finish then sees, and this outcome is dropped). Raises once the patience is spent; the job
    is then re-run after its lease expires."""
    deadline = time.monotonic() + patience.total_seconds()
    delays = iter(FINISH_RETRY_DELAYS_S)
    delay = next(delays)
    while True:
        try:
            return transact(
                ctx.db, ctx.publisher, lifecycle.finish, job_id, outcome, error, cancelled, owner
            )
        except UNREACHABLE as exc:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning(
                "job %s: outcome not recorded yet, the database is out of reach (%s); "
                "trying again in %.1fs",
                job_id,
                type(exc).__name__,
                delay,
            )
            time.sleep(delay)
            delay = next(delays, FINISH_RETRY_DELAYS_S[-1])


def _drop_outcome(ctx: WorkerContext, job_id: int, outcome: JobOutcome | None) -> None:
    """Delete the files of an outcome no row records (the job was taken over or ended
    meanwhile), so nothing of the user stays behind unreferenced, out of /forget's reach.
    Only files no row points at go: blobs are content-addressed, and a finish whose commit
    landed just before its connection dropped does reference them."""
    if outcome is None or not outcome.result_blobs:
        return
    try:
        freed = ctx.db.call(release, ctx.blobs, outcome.result_blobs)
    except SQLAlchemyError as exc:
        logger.warning(
            "job %s: files of the dropped outcome kept (%s)", job_id, type(exc).__name__
        )
        return
    logger.info("job %s: %d files of the dropped outcome deleted", job_id, freed)


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
    status = transact(ctx.db, ctx.publisher, lifecycle.fail_unclaimed, job_id, code, detail)
    if status is not None:
        send_io(ctx.celery, "delivery.send_result", job_id)
    return status
