"""Creating and cancelling jobs from the chat (sync, run through `Database.run`).

Every creation first locks the user's row, so the active-job and quota checks hold even when
two updates (or two bot replicas) race. The caller commits, then dispatches the job."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

from sqlalchemy.orm import Session

from bot.errors import ResultUnavailable, SelfieRequired, StyleUnavailable, TemplateUnavailable
from db.base import utcnow
from db.models import (
    Job,
    JobKind,
    JobStatus,
    Photo,
    PhotoKind,
    Style,
    StyleTraining,
    Template,
    User,
)
from db.repositories.jobs import JobRepository
from db.repositories.photos import PhotoRepository
from service.errors import ActiveJobExists, NotFound, QuotaExceeded, UserBanned, ValidationFailed
from service.settings import LimitsSettings
from tasks.webhooks import emit_event, job_event_payload, take_emitted

# Without history, assume a job takes this long (the tiny profile is faster, real is ~1 min).
DEFAULT_JOB_SECONDS = 60.0
# HD (upscale) jobs are free: see `create_upscale_job`.
QUOTA_KINDS = {JobKind.PORTRAIT, JobKind.TEMPLATE}


@dataclass(frozen=True)
class CreatedJob:
    """A committed-to-be job and what its status message shows."""

    job_id: int
    position: int
    eta_minutes: int


def day_start(now: datetime) -> datetime:
    """Midnight UTC of `now`'s day (quotas reset then)."""
    return datetime.combine(now.date(), time.min, tzinfo=now.tzinfo)


def _lock_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id, with_for_update=True, populate_existing=True)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    return user


def check_can_start(
    session: Session, user: User, limits: LimitsSettings, *, is_admin: bool, quota: bool = True
) -> None:
    """Raise the typed error that stops this user from starting a job now, if any."""
    if user.is_banned:
        raise UserBanned("banned")
    jobs = JobRepository(session)
    if len(jobs.active_for_user(user.id)) >= limits.active_jobs_per_user:
        raise ActiveJobExists("a job is already running")
    if not quota or is_admin:
        return
    allowed = user.daily_quota if user.daily_quota is not None else limits.daily_quota
    used = jobs.count_since(user.id, day_start(utcnow()), QUOTA_KINDS)
    if used >= allowed:
        raise QuotaExceeded("daily quota reached", quota=allowed)


def usable_style(session: Session, user_id: int, style_id: int) -> Style:
    """The style if it is enabled and visible to the user; StyleUnavailable otherwise."""
    style = session.get(Style, style_id)
    if style is None or not style.enabled or style.owner_id not in (None, user_id):
        raise StyleUnavailable(f"style {style_id} is not available")
    return style


def usable_template(session: Session, user_id: int, template_id: int) -> Template:
    """The template if it is enabled and visible to the user; TemplateUnavailable otherwise."""
    template = session.get(Template, template_id)
    if template is None or not template.enabled or template.owner_id not in (None, user_id):
        raise TemplateUnavailable(f"template {template_id} is not available")
    return template


def _selfies(session: Session, user_id: int, limits: LimitsSettings) -> list[Photo]:
    photos = list(PhotoRepository(session).usable_selfies(user_id, utcnow(), limits.max_selfies))
    if not photos:
        raise SelfieRequired("no usable selfie")
    return photos


def _eta_minutes(session: Session, position: int) -> int:
    durations = JobRepository(session).finished_durations(utcnow() - timedelta(days=1))
    average = sum(durations) / len(durations) if durations else DEFAULT_JOB_SECONDS
    return max(1, math.ceil((position + 1) * average / 60.0))


def _add(session: Session, job: Job) -> CreatedJob:
    repo = JobRepository(session)
    repo.add(job)
    position = repo.queue_position(job)
    return CreatedJob(job.id, position, _eta_minutes(session, position))


def create_portrait_job(
    session: Session,
    user_id: int,
    *,
    style_id: int,
    chat_id: int,
    limits: LimitsSettings,
    is_admin: bool,
    num_images: int,
    seed: int | None = None,
    pose_blob: str | None = None,
) -> CreatedJob:
    """A queued portrait job from the user's selfies in a style (checks limits first)."""
    user = _lock_user(session, user_id)
    check_can_start(session, user, limits, is_admin=is_admin)
    style = usable_style(session, user_id, style_id)
    photos = _selfies(session, user_id, limits)
    params: dict[str, Any] = {
        "photo_ids": [p.id for p in photos],
        "style_id": style.id,
        "num_images": num_images,
        "seed": seed,
        "pose_blob": pose_blob,
        # The user's /subject choice at creation (None: FairFace decides on the worker).
        "subject": user.subject,
    }
    return _add(
        session,
        Job(
            user_id=user_id,
            kind=JobKind.PORTRAIT,
            params=params,
            style_id=style.id,
            chat_id=chat_id,
        ),
    )


def create_template_job(
    session: Session,
    user_id: int,
    *,
    faces: list[int],
    chat_id: int,
    limits: LimitsSettings,
    is_admin: bool,
    template_id: int | None = None,
    template_photo_id: int | None = None,
    seed: int | None = None,
) -> CreatedJob:
    """A queued template job; `faces` are 0-based indices of the template's faces."""
    user = _lock_user(session, user_id)
    check_can_start(session, user, limits, is_admin=is_admin)
    if template_id is not None:
        count = len(usable_template(session, user_id, template_id).faces or [])
    else:
        assert template_photo_id is not None
        photo = PhotoRepository(session).owned(user_id, template_photo_id, PhotoKind.TEMPLATE)
        if photo is None:
            raise TemplateUnavailable("the template photo is gone")
        count = len(photo.faces or [])
    chosen = sorted(set(faces))
    if not chosen or any(not 0 <= i < count for i in chosen):
        raise ValidationFailed("no valid face chosen")
    selfie = _selfies(session, user_id, limits)[0]
    params: dict[str, Any] = {
        # The user's newest selfie goes into every chosen face.
        "photo_ids": [selfie.id] * len(chosen),
        "template_id": template_id,
        "template_photo_id": template_photo_id,
        "faces": [i + 1 for i in chosen],
        "seed": seed,
        "subject": user.subject,
    }
    return _add(
        session,
        Job(
            user_id=user_id,
            kind=JobKind.TEMPLATE,
            params=params,
            template_id=template_id,
            chat_id=chat_id,
        ),
    )


def create_training_job(
    session: Session,
    user_id: int,
    *,
    name: str,
    trigger_word: str,
    photo_ids: list[int],
    chat_id: int,
    limits: LimitsSettings,
    is_admin: bool,
) -> CreatedJob:
    """A StyleTraining row and its queued training job."""
    user = _lock_user(session, user_id)
    check_can_start(session, user, limits, is_admin=is_admin, quota=False)
    repo = PhotoRepository(session)
    photos = [repo.owned(user_id, pid, PhotoKind.TRAINING) for pid in photo_ids]
    blobs = [p.sha256 for p in photos if p is not None]
    if len(blobs) < limits.training_min_images:
        raise ValidationFailed("too few training images")
    training = StyleTraining(
        user_id=user_id, name=name, trigger_word=trigger_word, image_blobs=blobs, captions=[]
    )
    session.add(training)
    session.flush()
    created = _add(
        session,
        Job(
            user_id=user_id,
            kind=JobKind.TRAINING,
            params={"training_id": training.id},
            chat_id=chat_id,
        ),
    )
    training.job_id = created.job_id
    return created


def create_upscale_job(
    session: Session,
    user_id: int,
    *,
    source_job_id: int,
    index: int,
    size: int,
    chat_id: int,
    limits: LimitsSettings,
    is_admin: bool,
) -> CreatedJob:
    """A queued HD (×4) job for portrait `index` (0-based) of the user's finished portrait job.

    HD does not count against the daily quota: it costs about 1% of a generation (one RRDB
    pass against 30 denoising steps for several candidates) and only enlarges a portrait the
    user already has. The one-active-job rule still applies, so it cannot flood the gpu queue.
    """
    user = _lock_user(session, user_id)
    check_can_start(session, user, limits, is_admin=is_admin, quota=False)
    source = owned_job(session, user_id, source_job_id)
    if (
        source is None
        or source.kind is not JobKind.PORTRAIT
        or source.status not in (JobStatus.SUCCEEDED, JobStatus.DELIVERED)
        or not 0 <= index < len(source.result_blobs or [])
    ):
        raise ResultUnavailable(f"job {source_job_id} has no portrait {index}")
    params: dict[str, Any] = {"source_job_id": source.id, "index": index, "size": size}
    return _add(
        session, Job(user_id=user_id, kind=JobKind.UPSCALE, params=params, chat_id=chat_id)
    )


def set_status_message(session: Session, job_id: int, message_id: int) -> None:
    """Remember the status message so workers can edit it."""
    job = session.get(Job, job_id)
    if job is not None:
        job.status_message_id = message_id


def owned_job(session: Session, user_id: int, job_id: int) -> Job | None:
    """The job if it belongs to the user."""
    job = session.get(Job, job_id)
    return job if job is not None and job.user_id == user_id else None


class CancelOutcome:
    CANCELLED = "cancelled"
    REQUESTED = "requested"
    FINISHED = "finished"
    MISSING = "missing"


def cancel_for_user(session: Session, user_id: int, job_id: int) -> tuple[str, list[int]]:
    """Cancel the user's job: queued at once, running at its next step.

    Returns the outcome and the webhook deliveries to enqueue after the commit.
    """
    job = session.get(Job, job_id, with_for_update=True, populate_existing=True)
    if job is None or job.user_id != user_id:
        return CancelOutcome.MISSING, []
    if job.status is JobStatus.QUEUED:
        job.transition(JobStatus.CANCELLED)
        job.error_code = "cancelled"
        emit_event(session, "job.cancelled", job_event_payload(job))
        return CancelOutcome.CANCELLED, take_emitted(session)
    if job.status is JobStatus.RUNNING:
        job.cancel_requested = True
        return CancelOutcome.REQUESTED, []
    return CancelOutcome.FINISHED, []
