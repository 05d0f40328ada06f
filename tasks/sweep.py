"""Periodic maintenance (beat): the outbox sweep, expired job leases and selfie expiry.

What is lost or stuck is decided by `domain.lifecycle.sweep` (and the webhook and broadcast
queries); this module publishes what it found."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Task, shared_task

from db.base import utcnow
from domain import blobs, inbox, lifecycle, privacy
from domain.lifecycle import REDELIVER_AFTER, REQUEUE_AFTER
from domain.outbox import transact
from tasks.broadcast import resend_stalled_broadcasts
from tasks.context import get_context
from tasks.dispatch import send_io
from tasks.webhooks import resend_stale_deliveries

logger = logging.getLogger(__name__)


def sweep_once(
    *,
    outbox_grace: timedelta,
    time_limit: timedelta,
    train_time_limit: timedelta | None = None,
    redeliver_after: timedelta = REDELIVER_AFTER,
    broadcast_stall: timedelta = REQUEUE_AFTER,
) -> dict[str, int]:
    """One pass: re-queue jobs whose lease expired (and those never published), fail or cancel
    those that cannot go on, and re-queue the delivery of finished jobs whose result never
    reached the user."""
    ctx = get_context()
    # The re-queued jobs and the webhook events of ended ones are published after the commit.
    plan = transact(
        ctx.db,
        ctx.publisher,
        lifecycle.sweep,
        outbox_grace=outbox_grace,
        time_limit=time_limit,
        train_time_limit=train_time_limit,
        redeliver_after=redeliver_after,
    )
    for job_id in dict.fromkeys(plan.failed + plan.undelivered):
        send_io(ctx.celery, "delivery.send_result", job_id)
    webhooks = resend_stale_deliveries(ctx.celery, ctx.db, outbox_grace)
    broadcasts = resend_stalled_broadcasts(ctx.celery, ctx.db, broadcast_stall)
    if plan.resend or plan.failed or plan.undelivered or webhooks or broadcasts:
        logger.info(
            "sweep: re-queued %d jobs, %d results, %d webhook deliveries, %d broadcasts; ended %d",
            len(plan.resend),
            len(plan.undelivered),
            webhooks,
            broadcasts,
            len(plan.failed),
        )
    return {
        "resent": len(plan.resend),
        "failed": len(plan.failed),
        "redelivered": len(plan.undelivered),
        "webhooks": webhooks,
        "broadcasts": broadcasts,
    }


@shared_task(name="maintenance.sweep", bind=True, ignore_result=True)
def sweep(self: Task) -> dict[str, int]:
    """Beat entry point for `sweep_once` with the configured limits."""
    broker = get_context().config.broker
    return sweep_once(
        outbox_grace=timedelta(seconds=broker.outbox_grace_seconds),
        time_limit=timedelta(seconds=broker.gpu_time_limit),
        train_time_limit=timedelta(seconds=broker.train_time_limit),
        redeliver_after=timedelta(seconds=broker.delivery_lease_seconds),
    )


@shared_task(name="maintenance.expire", bind=True, ignore_result=True)
def expire(self: Task) -> int:
    """Privacy: delete photos past their retention period, the images of jobs past
    LIMITS_RESULT_RETENTION_DAYS and the pictures of trainings that have ended; and the updates
    handled more than a day ago (`domain.inbox.KEEP_DONE`)."""
    ctx = get_context()
    now = utcnow()
    removed = ctx.db.call(privacy.expire_photos, ctx.blobs, now)
    retention = timedelta(days=ctx.config.limits.result_retention_days)
    results = ctx.db.call(privacy.expire_results, ctx.blobs, now, retention)
    trainings = ctx.db.call(privacy.drop_training_images, ctx.blobs)
    purged = ctx.db.call(inbox.purge)
    logger.info(
        "expired %d photos, the images of %d jobs, the pictures of %d ended trainings; "
        "purged %d handled updates",
        removed,
        results,
        trainings,
        purged,
    )
    return removed


@shared_task(name="maintenance.collect_blobs", bind=True, ignore_result=True)
def collect_blobs(self: Task) -> dict[str, int]:
    """Delete blobs no row points at (left by a process that died between storing a file and
    recording it), once they are older than `domain.blobs.gc_grace`."""
    ctx = get_context()
    found = blobs.collect_garbage(ctx.db, ctx.blobs, grace=blobs.gc_grace(ctx.config.broker))
    return {"scanned": found.scanned, "unreferenced": found.unreferenced, "deleted": found.deleted}
