"""Periodic maintenance (beat): the outbox sweep, stuck-job recovery and selfie expiry."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Task, shared_task
from sqlalchemy import select

from db.base import utcnow
from db.models import Job, JobKind, JobStatus
from db.repositories import JobRepository
from tasks.context import get_context
from tasks.dispatch import dispatch_job, send_io
from tasks.jobs import MAX_ATTEMPTS, STALE_AFTER

logger = logging.getLogger(__name__)

# A queued job whose message may have been lost with the broker (e.g. Redis restarted without
# persistence) is re-sent after this long; duplicates are harmless (tasks are idempotent).
REQUEUE_AFTER = timedelta(minutes=5)
# A finished job still not delivered this long after it finished lost its delivery message (the
# broker restarted, or was down when the worker finished). Longer than a delivery's own retries
# take, so a delivery that is merely waiting out a 429 is not sent twice.
REDELIVER_AFTER = timedelta(minutes=15)


def sweep_once(
    *,
    outbox_grace: timedelta,
    time_limit: timedelta,
    train_time_limit: timedelta | None = None,
    requeue_after: timedelta = REQUEUE_AFTER,
    stale_after: timedelta = STALE_AFTER,
    redeliver_after: timedelta = REDELIVER_AFTER,
) -> dict[str, int]:
    """One pass: re-send lost jobs, redeliver stalled ones, fail those past their limit, and
    re-queue the delivery of finished jobs whose result never reached the user."""
    ctx = get_context()
    now = utcnow()
    resend: list[int] = []
    notify: list[int] = []
    with ctx.db.session() as session:
        repo = JobRepository(session)
        resend += [j.id for j in repo.undispatched(outbox_grace)]
        resend += list(
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
                notify.append(job.id)
        stalled = session.scalars(
            select(Job).where(Job.status == JobStatus.RUNNING, Job.updated_at < now - stale_after)
        ).all()
        for job in stalled:
            if job.attempts >= MAX_ATTEMPTS:
                job.fail("internal", f"worker lost {job.attempts} times")
                notify.append(job.id)
            else:
                resend.append(job.id)
        undelivered = list(
            session.scalars(
                select(Job.id).where(
                    Job.status.in_((JobStatus.SUCCEEDED, JobStatus.FAILED)),
                    Job.chat_id.is_not(None),
                    Job.finished_at <= now - redeliver_after,
                )
            )
        )
    sent = sum(dispatch_job(ctx.celery, ctx.db, job_id) for job_id in dict.fromkeys(resend))
    for job_id in dict.fromkeys(notify + undelivered):
        send_io(ctx.celery, "delivery.send_result", job_id)
    from tasks.broadcast import resend_stalled_broadcasts
    from tasks.webhooks import resend_stale_deliveries

    webhooks = resend_stale_deliveries(ctx.celery, ctx.db, outbox_grace)
    broadcasts = resend_stalled_broadcasts(ctx.celery, ctx.db, requeue_after)
    if sent or notify or undelivered or webhooks or broadcasts:
        logger.info(
            "sweep: re-sent %d jobs, %d results, %d webhook deliveries, %d broadcasts; failed %d",
            sent,
            len(undelivered),
            webhooks,
            broadcasts,
            len(notify),
        )
    return {
        "resent": sent,
        "failed": len(notify),
        "redelivered": len(undelivered),
        "webhooks": webhooks,
        "broadcasts": broadcasts,
    }


@shared_task(name="maintenance.sweep", bind=True, ignore_result=True)
def sweep(self: Task) -> dict[str, int]:
    """Beat entry point for `sweep_once` with the configured limits."""
    broker = get_context().config.broker
    return sweep_once(
        outbox_grace=timedelta(seconds=broker.outbox_grace_seconds),
        time_limit=timedelta(seconds=broker.gpu_time_limit + 60),
        train_time_limit=timedelta(seconds=broker.train_time_limit + 60),
    )


@shared_task(name="maintenance.expire", bind=True, ignore_result=True)
def expire(self: Task) -> int:
    """Delete selfies past their retention period (privacy)."""
    from bot.privacy import expire_photos

    ctx = get_context()
    with ctx.db.session() as session:
        removed = expire_photos(session, ctx.blobs, utcnow())
    logger.info("expired %d photos", removed)
    return removed
