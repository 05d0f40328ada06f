"""The Celery app, built from settings: queues `gpu` and `io`, JSON only, late acks.

One gpu worker process per GPU (`--concurrency=1`, prefetch 1) keeps the engine resident;
io workers send Telegram messages and webhooks. Without BROKER_URL the embedded SQLite
transport is used, so a single machine needs no broker server."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from celery import Celery
from kombu import Queue

from core.settings import AppConfig

logger = logging.getLogger(__name__)

# The task modules each queue's workers run. A worker imports only those of the queues it
# consumes, so io workers never import torch, diffusers or transformers; beat and the producers
# (bot, web) import none: they send tasks by name.
QUEUE_MODULES: dict[str, tuple[str, ...]] = {
    "gpu": ("tasks.generate", "tasks.inpaint", "tasks.upscale", "tasks.train_style"),
    "train": ("tasks.train_style",),
    "io": ("tasks.deliver", "tasks.webhooks", "tasks.broadcast", "tasks.sweep", "tasks.payments"),
}
TASK_MODULES = tuple(dict.fromkeys(m for modules in QUEUE_MODULES.values() for m in modules))

GPU_TASKS = ("portrait.generate", "template.inpaint", "portrait.upscale")
# Style trainings run for hours: on a queue of their own, so portraits never wait behind one.
TRAIN_TASKS = ("style.train",)
IO_TASKS = (
    "delivery.send_result",
    "delivery.progress",
    "delivery.pose_preview",
    "delivery.safety_alert",
    "webhooks.deliver",
    "broadcast.send",
    "maintenance.sweep",
    "maintenance.expire",
    "maintenance.collect_blobs",
    "payments.reconcile",
)


def _limits(seconds: int) -> dict[str, int]:
    return {"soft_time_limit": seconds, "time_limit": seconds + 30}


def modules_for(queues: Iterable[str] | None) -> tuple[str, ...]:
    """The task modules a process consuming `queues` imports (None: every module)."""
    if queues is None:
        return TASK_MODULES
    return tuple(dict.fromkeys(m for q in queues for m in QUEUE_MODULES.get(q, ())))


# Seconds an unacked message outlives its queue's time limit before Redis hands it out again.
VISIBILITY_MARGIN_S = 300


def visibility_timeout(config: AppConfig, queue: str) -> int:
    """How long an unacked message of `queue` is held before it is given to another worker."""
    broker = config.broker
    limit = {
        "gpu": broker.gpu_time_limit,
        "train": broker.train_time_limit,
        "io": broker.io_time_limit,
    }.get(queue, max(broker.gpu_time_limit, broker.train_time_limit))
    return limit + VISIBILITY_MARGIN_S


def redis_transport_options(config: AppConfig, queues: Iterable[str] | None) -> dict[str, object]:
    """Redis visibility timeout per worker role, each role with its own unacked set.

    An unacked message comes back after the visibility timeout; it must outlast the task, or
    Redis hands a running job to a second worker. Any client restores every message of its
    unacked set that is older than its own timeout, so a role with a short timeout (io: a few
    minutes) keeps its unacked messages under keys of its own: it never restores a gpu or
    training message that is still running. Producers (bot, web, beat) consume nothing; they
    keep the longest timeout and the shared default keys. Faster crash recovery of jobs comes
    from the job lease: the sweep re-queues a job whose worker stopped renewing it."""
    names = sorted(set(queues)) if queues is not None else []
    if not names:
        longest = max(visibility_timeout(config, "gpu"), visibility_timeout(config, "train"))
        return {"visibility_timeout": longest}
    role = "-".join(names)
    return {
        "visibility_timeout": max(visibility_timeout(config, q) for q in names),
        "unacked_key": f"unacked:{role}",
        "unacked_index_key": f"unacked_index:{role}",
        "unacked_mutex_key": f"unacked_mutex:{role}",
    }


def beat_schedule(config: AppConfig) -> dict[str, dict[str, object]]:
    """What beat sends, and how often; reconciling payments only with payments on."""
    schedule: dict[str, dict[str, object]] = {
        "sweep": {
            "task": "maintenance.sweep",
            "schedule": timedelta(seconds=config.broker.sweep_interval_seconds),
            "options": {"queue": "io"},
        },
        "expire": {
            "task": "maintenance.expire",
            "schedule": timedelta(hours=1),
            "options": {"queue": "io"},
        },
        "collect-blobs": {
            "task": "maintenance.collect_blobs",
            "schedule": timedelta(hours=24),
            "options": {"queue": "io"},
        },
    }
    payments = config.payments
    if payments.enabled and payments.reconcile_interval_seconds > 0:
        schedule["reconcile-payments"] = {
            "task": "payments.reconcile",
            "schedule": timedelta(seconds=payments.reconcile_interval_seconds),
            "options": {"queue": "io"},
        }
    return schedule


def create_celery(config: AppConfig, queues: Iterable[str] | None = None) -> Celery:
    """Build the Celery app for this configuration; a worker passes the queues it consumes."""
    broker = config.broker
    app = Celery("facechain_bot", broker=broker.effective_url, set_as_current=True)
    transport_options: dict[str, object] = {}
    if broker.effective_url.startswith(("redis://", "rediss://")):
        transport_options = redis_transport_options(config, queues)
    app.conf.update(
        imports=modules_for(queues),
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        # A worker child killed mid-task puts the message back instead of dropping it.
        task_reject_on_worker_lost=True,
        task_queues=(Queue("gpu"), Queue("train"), Queue("io")),
        task_default_queue="io",
        task_routes={
            **{name: {"queue": "gpu"} for name in GPU_TASKS},
            **{name: {"queue": "train"} for name in TRAIN_TASKS},
        },
        # The soft limit raises inside the task (the job fails as timed_out); the hard one kills.
        task_annotations={
            "portrait.generate": _limits(broker.gpu_time_limit),
            "template.inpaint": _limits(broker.gpu_time_limit),
            "portrait.upscale": _limits(broker.gpu_time_limit),
            "style.train": _limits(broker.train_time_limit),
            **{name: _limits(broker.io_time_limit) for name in IO_TASKS},
        },
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options,
        timezone="UTC",
        beat_schedule=beat_schedule(config),
    )
    app.conf.facechain_config = config
    return app
