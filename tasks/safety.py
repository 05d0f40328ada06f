"""Checked outputs of a gpu job: counted on this worker's /metrics (probe port), the flagged ones
recorded (audit rows, webhook event) and, once a user is flagged repeatedly, the admin chat told
(io task `delivery.safety_alert`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kombu.exceptions import KombuError

from core.metrics import default_metrics
from domain import safety
from domain.outbox import transact
from facechain.safety import SafetyVerdict
from tasks.context import WorkerContext
from tasks.dispatch import send_io
from tasks.jobs import JobSnapshot

logger = logging.getLogger(__name__)

ALERT_TASK = "delivery.safety_alert"


def record_flags(
    ctx: WorkerContext,
    job: JobSnapshot,
    kind: safety.Kind,
    verdicts: Sequence[SafetyVerdict],
    checked: int | None = None,
) -> None:
    """Count what the checker looked at (`checked`, default: the flagged ones alone, as when
    everything was flagged) and record what it flagged in this job."""
    default_metrics().record_safety(
        kind, checked=len(verdicts) if checked is None else checked, flagged=len(verdicts)
    )
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
