"""Publishing to the broker: the domain's `Publisher` port, on Celery.

A job row is committed first, so a crash between commit and publish leaves a queued row with no
`dispatched_at`; the sweep re-sends it. Publishing twice is harmless: tasks check the job status
under a row lock before doing anything. The same holds for webhook deliveries (a pending row
with no attempts) and broadcasts (a queued row), which the sweep re-sends too."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable

from celery import Celery
from kombu.exceptions import KombuError

from core.workers import KEY_PREFIX, MAX_LISTED, WorkerStatus
from db.models import JobKind
from db.session import Database
from domain import lifecycle
from domain.outbox import Outbox

logger = logging.getLogger(__name__)

TASK_FOR_KIND: dict[JobKind, str] = {
    JobKind.PORTRAIT: "portrait.generate",
    JobKind.TEMPLATE: "template.inpaint",
    JobKind.TRAINING: "style.train",
    JobKind.UPSCALE: "portrait.upscale",
}
# Trainings have their own queue and workers (`worker --queues train`); the rest share `gpu`.
QUEUE_FOR_KIND: dict[JobKind, str] = {JobKind.TRAINING: "train"}
CHECK_TIMEOUT_SECONDS = 3.0


def dispatch_job(celery: Celery, db: Database, job_id: int) -> bool:
    """Publish the task of a queued (or re-queued running) job; False if it needs none."""
    kind = db.call(lifecycle.dispatchable_kind, job_id)
    if kind is None:
        return False
    celery.send_task(TASK_FOR_KIND[kind], args=[job_id], queue=QUEUE_FOR_KIND.get(kind, "gpu"))
    db.call(lifecycle.mark_dispatched, job_id)
    logger.info("dispatched job %s (%s)", job_id, kind.value)
    return True


def send_io(celery: Celery, name: str, *args: object, countdown: float | None = None) -> None:
    """Publish an io-queue task (delivery, progress, webhooks)."""
    celery.send_task(name, args=list(args), queue="io", countdown=countdown)


def enqueue_deliveries(celery: Celery, delivery_ids: Iterable[int]) -> None:
    """Publish `webhooks.deliver` for each id; call only after the rows are committed."""
    for delivery_id in delivery_ids:
        celery.send_task("webhooks.deliver", args=[delivery_id], queue="io")


def enqueue_broadcast(celery: Celery, broadcast_id: int) -> None:
    """Publish `broadcast.send`; call only after the row is committed."""
    celery.send_task("broadcast.send", args=[broadcast_id], queue="io")


def ping_broker(celery: Celery, timeout: float = CHECK_TIMEOUT_SECONDS) -> None:
    """Open (and close) one broker connection; raise if that fails."""
    with celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)


# The worker queues whose depth /metrics reports.
QUEUES = ("gpu", "train", "io")


class CeleryPublisher:
    """`domain.outbox.Publisher` on a Celery app: jobs on gpu, deliveries and broadcasts on io."""

    def __init__(self, celery: Celery, db: Database) -> None:
        self.celery = celery
        self.db = db

    def publish(self, outbox: Outbox) -> None:
        """Publish everything in the outbox; a broker failure is logged (the sweep re-sends)."""
        for job_id in outbox.jobs:
            self._quietly(f"job {job_id}", dispatch_job, self.celery, self.db, job_id)
        if outbox.deliveries:
            self._quietly("webhook deliveries", enqueue_deliveries, self.celery, outbox.deliveries)
        for broadcast_id in outbox.broadcasts:
            self._quietly(
                f"broadcast {broadcast_id}", enqueue_broadcast, self.celery, broadcast_id
            )
        for job_id in outbox.results:
            self._quietly(
                f"result of job {job_id}", send_io, self.celery, "delivery.send_result", job_id
            )

    def ping(self) -> None:
        """Raise if the broker cannot be reached."""
        ping_broker(self.celery)

    def workers(self) -> list[WorkerStatus]:
        """The workers whose status is in the broker (Redis only; bounded SCAN + MGET)."""
        with self.celery.connection_for_read() as conn:
            client = getattr(conn.default_channel, "client", None)
            if client is None or not hasattr(client, "scan_iter"):
                return []
            keys = list(
                itertools.islice(client.scan_iter(match=f"{KEY_PREFIX}*", count=100), MAX_LISTED)
            )
            raws = client.mget(keys) if keys else []
        found = [WorkerStatus.decode(raw) for raw in raws if raw is not None]
        return sorted((w for w in found if w is not None), key=lambda w: w.name)

    def queue_depths(self) -> dict[str, int]:
        """Messages waiting in each worker queue (Redis: LLEN over its priority lists)."""
        with self.celery.connection_for_read() as conn:
            channel = conn.default_channel
            size = getattr(channel, "_size", None)
            if size is None:
                # A broker without a cheap size (AMQP): passive declares report the count.
                return {
                    q: int(channel.queue_declare(q, passive=True).message_count) for q in QUEUES
                }
            return {q: int(size(q)) for q in QUEUES}

    @staticmethod
    def _quietly(what: str, fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except (KombuError, OSError) as exc:
            logger.warning("%s not dispatched now (the sweep re-sends it): %s", what, exc)
