"""The outbox: publish a committed job's task, then stamp `dispatched_at`.

The job row is committed first, so a crash between commit and publish leaves a queued row
with no `dispatched_at`; the sweep re-sends it. Publishing twice is harmless: tasks check the
job status under a row lock before doing anything."""

from __future__ import annotations

import logging

from celery import Celery

from db.base import utcnow
from db.models import Job, JobKind, JobStatus
from db.session import Database

logger = logging.getLogger(__name__)

TASK_FOR_KIND: dict[JobKind, str] = {
    JobKind.PORTRAIT: "portrait.generate",
    JobKind.TEMPLATE: "template.inpaint",
    JobKind.TRAINING: "style.train",
    JobKind.UPSCALE: "portrait.upscale",
}


def dispatch_job(celery: Celery, db: Database, job_id: int) -> bool:
    """Publish the task of a queued (or redelivered running) job; False if it needs none."""
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None or job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
            return False
        kind = job.kind
    celery.send_task(TASK_FOR_KIND[kind], args=[job_id], queue="gpu")
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is not None:
            job.dispatched_at = utcnow()
    logger.info("dispatched job %s (%s)", job_id, kind.value)
    return True


def send_io(celery: Celery, name: str, *args: object, countdown: float | None = None) -> None:
    """Publish an io-queue task (delivery, progress, webhooks)."""
    celery.send_task(name, args=list(args), queue="io", countdown=countdown)
