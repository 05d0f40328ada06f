"""Flagged outputs of a gpu job: recorded (audit rows, webhook event) and, once a user is flagged
repeatedly, the admin chat told (io task `delivery.safety_alert`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kombu.exceptions import KombuError

from domain import safety
from domain.outbox import transact
from facechain.safety import SafetyVerdict
from tasks.context import WorkerContext
from tasks.dispatch import send_io
from tasks.jobs import JobSnapshot

logger = logging.getLogger(__name__)

ALERT_TASK = "delivery.safety_alert"


def record_flags(
    ctx: WorkerContext, job: JobSnapshot, kind: safety.Kind, verdicts: Sequence[SafetyVerdict]
) -> None:
    """Record what the checker flagged in this job (nothing when nothing was flagged)."""
    if not verdicts:
        return
    flagged = transact(
        ctx.db,
        ctx.publisher,
        safety.record_flagged,
        job.user_id,
        kind,
        [v.score for v in verdicts],
        ctx.config.safety.alert_after,
        job.id,
    )
    if flagged.alert:
        try:
            send_io(ctx.celery, ALERT_TASK, job.user_id, flagged.recent, kind)
        except (KombuError, OSError) as exc:
            logger.warning("job %s: safety alert not queued (%s)", job.id, exc)
