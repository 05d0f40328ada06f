"""Delivering a job's outcome to its chat under the delivery lease (docs/ARCHITECTURE.md,
"Delivery lease"), and the pose preview."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from db.base import db_now, utcnow
from db.models import FINAL_STATUSES, Job, JobKind, JobStatus, Style, User
from db.repositories.jobs import JobRepository
from domain.lifecycle.leases import DELIVERY_LEASE

logger = logging.getLogger(__name__)


@dataclass
class Delivery:
    """What the chat messages about a job need (read in one short transaction)."""

    job_id: int
    kind: JobKind
    status: JobStatus
    chat_id: int | None
    status_message_id: int | None
    language: str
    style_id: int | None
    error_code: str | None
    error_detail: str | None = None
    result_blobs: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    position: int = 0
    progress: float = 0.0
    done: bool = False
    attempts: int = 0
    # A worker took it (it ran): a cancel then keeps its charge (`billing.gives_back`).
    started: bool = False
    # Send calls of the outcome that returned (a second delivery goes on after them), and
    # whether another io task holds the delivery lease right now (send nothing).
    step: int = 0
    busy: bool = False


def _language(session: Session, job: Job) -> str:
    user = session.get(User, job.user_id) if job.user_id else None
    return user.language if user else "en"


def delivery(session: Session, job_id: int) -> Delivery | None:
    """The job as its chat messages show it; None when the job is gone."""
    job = session.get(Job, job_id)
    if job is None:
        return None
    language = _language(session, job)
    meta = dict(job.result_meta or {})
    if job.kind is JobKind.TRAINING and job.style_id is not None and "style_name" not in meta:
        # "Your style “…” is ready!" names the style the training registered.
        style = session.get(Style, job.style_id)
        if style is not None:
            meta["style_name"] = style.name_for(language)
    return Delivery(
        job_id=job.id,
        kind=job.kind,
        status=job.status,
        chat_id=job.chat_id,
        status_message_id=job.status_message_id,
        language=language,
        style_id=job.style_id,
        error_code=job.error_code,
        error_detail=job.error_detail,
        result_blobs=list(job.result_blobs or []),
        meta=meta,
        position=JobRepository(session).queue_position(job),
        progress=job.progress,
        done=job.delivery_done,
        attempts=job.delivery_attempts,
        started=job.started_at is not None,
        step=job.delivery_step,
    )


def start_delivery(
    session: Session,
    job_id: int,
    owner: str | None = None,
    lease: timedelta = DELIVERY_LEASE,
) -> Delivery | None:
    """Claim the delivery of a finished job's outcome for `owner` (the io task) and count one
    send; a snapshot of it; None when the job is gone.

    `Delivery.done` says the chat already has it (or its delivery was given up), `busy` that
    another io task holds a live delivery lease: send nothing in either case. `step` says how
    many of its send calls a former delivery recorded as returned."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        return None
    busy = False
    if job.status in FINAL_STATUSES and not job.delivery_done:
        now = db_now(session)
        busy = (
            owner is not None
            and job.delivery_owner not in (None, owner)
            and job.delivery_lease_expires_at is not None
            and job.delivery_lease_expires_at > now
        )
        if not busy:
            job.delivery_attempts += 1
            if owner is not None:
                job.delivery_owner = owner
                job.delivery_lease_expires_at = now + lease
    d = delivery(session, job_id)
    if d is not None:
        d.busy = busy
    return d


def renew_delivery(session: Session, job_id: int, owner: str, lease: timedelta) -> bool:
    """The delivery's heartbeat: extend `owner`'s lease; False when it is no longer theirs."""
    now = db_now(session)
    renewed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.delivery_owner == owner, Job.delivered_at.is_(None))
        .values(delivery_lease_expires_at=now + lease)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(renewed, "rowcount", 0))


def record_delivery_step(session: Session, job_id: int, owner: str, step: int) -> bool:
    """`step` send calls of the outcome returned: a later delivery starts after them. False
    when the lease is no longer `owner`'s (another io task took the delivery over)."""
    recorded = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.delivery_owner == owner, Job.delivery_step < step)
        .values(delivery_step=step)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(recorded, "rowcount", 0))


def mark_delivered(session: Session, job_id: int) -> None:
    """The outcome reached the chat (or there is no chat to reach): record when."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is not None and job.status in FINAL_STATUSES and job.delivered_at is None:
        job.delivered_at = utcnow()
        job.delivery_owner = None
        job.delivery_lease_expires_at = None


def mark_undeliverable(session: Session, job_id: int, error: str) -> None:
    """Telegram refused the outcome for good (or the attempts ran out): record why."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is not None and not job.delivery_done:
        job.delivery_error = error[:2000]
        job.delivery_owner = None
        job.delivery_lease_expires_at = None
        logger.warning("job %s: delivery given up: %s", job_id, error)


@dataclass(frozen=True)
class PosePreview:
    """Where the "pose found" preview goes and which skeleton map it shows."""

    chat_id: int
    language: str
    map_blob: str


def pose_preview(session: Session, job_id: int) -> PosePreview | None:
    """The preview of a job's extracted pose, while it is still worth sending."""
    job = session.get(Job, job_id)
    if job is None or job.chat_id is None:
        return None
    key = (job.params or {}).get("pose_map_blob")
    # Once the album is out, or the job ended otherwise, a preview would only confuse.
    if (
        not isinstance(key, str)
        or job.status not in (JobStatus.RUNNING, JobStatus.SUCCEEDED)
        or job.delivered_at is not None
        or job.delivery_step > 0
    ):
        return None
    return PosePreview(job.chat_id, _language(session, job), key)
