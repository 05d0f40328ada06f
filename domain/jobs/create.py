"""Creating jobs, one function per kind, each under the user's row lock with the ban,
active-job and quota/credit checks (`check_can_start`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.blobstore import BlobStore
from core.errors import (
    ActiveJobExists,
    NotFound,
    ResultExpired,
    ResultUnavailable,
    SelfieRequired,
    TemplateUnavailable,
    UserBanned,
    ValidationFailed,
)
from core.settings import LimitsSettings, PaymentsSettings
from db.base import utcnow
from db.models import Job, JobKind, JobStatus, Photo, PhotoKind, StyleTraining, User
from db.repositories.jobs import JobRepository
from db.repositories.photos import PhotoRepository
from domain import billing, uploads
from domain.privacy import results_expired
from domain.styles import usable_style
from domain.templates import usable_template
from domain.trainings import valid_name, valid_trigger

# Without history, assume a job takes this long (the tiny profile is faster, real is ~1 min).
DEFAULT_JOB_SECONDS = 60.0
# Payments off: the free daily quota only (the charge rules are in `domain.billing`).
NO_PAYMENTS = PaymentsSettings(enabled=False)
# FaceChain's HD size for SD1.5's 512 px portraits (×4); smaller images stay plain ×4.
HD_SIZE = 2048


@dataclass(frozen=True)
class CreatedJob:
    """A committed-to-be job and what its status message shows."""

    job_id: int
    position: int
    eta_minutes: int
    # Set when the update that creates it was handled before (a replay after the bot died):
    # the job that run created, and the status message it had shown, if any.
    replayed: bool = False
    status_message_id: int | None = None


@dataclass(frozen=True)
class PoseUpload:
    """A pose photo the user sent with a portrait request, not stored yet."""

    blobs: BlobStore
    data: bytes

    def store(self, session: Session, user_id: int, limits: LimitsSettings) -> str:
        """Count its bytes against the user's day (UploadLimitReached), then store it."""
        uploads.count_upload(session, user_id, len(self.data), limits)
        return self.blobs.put(self.data)


def _lock_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id, with_for_update=True, populate_existing=True)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    return user


def check_can_start(
    session: Session,
    user: User,
    limits: LimitsSettings,
    *,
    is_admin: bool,
    kind: JobKind,
    payments: PaymentsSettings | None = None,
) -> billing.Charge:
    """What a new job of `kind` will cost this user; raises the typed error that stops them
    from starting it now, if any (the caller holds the user's row lock)."""
    if user.is_banned:
        raise UserBanned("banned")
    jobs = JobRepository(session)
    if len(jobs.active_for_user(user.id)) >= limits.active_jobs_per_user:
        raise ActiveJobExists("a job is already running")
    return billing.plan_charge(
        session, user, kind, limits, payments or NO_PAYMENTS, is_admin=is_admin
    )


def _selfies(session: Session, user_id: int, limits: LimitsSettings) -> list[Photo]:
    photos = list(PhotoRepository(session).usable_selfies(user_id, utcnow(), limits.max_selfies))
    if not photos:
        raise SelfieRequired("no usable selfie")
    return photos


def _eta_minutes(session: Session, position: int) -> int:
    durations = JobRepository(session).finished_durations(utcnow() - timedelta(days=1))
    average = sum(durations) / len(durations) if durations else DEFAULT_JOB_SECONDS
    return max(1, math.ceil((position + 1) * average / 60.0))


def _created_by(session: Session, update_id: int | None) -> CreatedJob | None:
    """The job a Telegram update already created (its handler ran before the bot died and
    the update is replayed): found, never created or charged twice."""
    if update_id is None:
        return None
    job = session.scalar(select(Job).where(Job.update_id == update_id))
    if job is None:
        return None
    position = JobRepository(session).queue_position(job)
    return CreatedJob(
        job.id,
        position,
        _eta_minutes(session, position),
        replayed=True,
        status_message_id=job.status_message_id,
    )


def _add(
    session: Session,
    job: Job,
    charge: billing.Charge = billing.FREE,
    update_id: int | None = None,
) -> CreatedJob:
    repo = JobRepository(session)
    job.update_id = update_id
    repo.add(job)
    billing.apply_charge(session, job, charge)
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
    pose: PoseUpload | None = None,
    payments: PaymentsSettings | None = None,
    update_id: int | None = None,
) -> CreatedJob:
    """A queued portrait job from the user's selfies in a style (checks limits first).

    A pose photo is stored only once every check passed (a refused job leaves no blob), and
    counts against the user's daily upload bytes. A replay of the update that created a job
    (`update_id`) finds that job instead of making a second one."""
    if (replayed := _created_by(session, update_id)) is not None:
        return replayed
    user = _lock_user(session, user_id)
    charge = check_can_start(
        session, user, limits, is_admin=is_admin, kind=JobKind.PORTRAIT, payments=payments
    )
    style = usable_style(session, user_id, style_id)
    photos = _selfies(session, user_id, limits)
    pose_blob = pose.store(session, user_id, limits) if pose is not None else None
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
        charge,
        update_id,
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
    payments: PaymentsSettings | None = None,
    update_id: int | None = None,
) -> CreatedJob:
    """A queued template job; `faces` are 0-based indices of the template's faces."""
    if (replayed := _created_by(session, update_id)) is not None:
        return replayed
    user = _lock_user(session, user_id)
    charge = check_can_start(
        session, user, limits, is_admin=is_admin, kind=JobKind.TEMPLATE, payments=payments
    )
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
        charge,
        update_id,
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
    update_id: int | None = None,
) -> CreatedJob:
    """A StyleTraining row and its queued training job."""
    if (replayed := _created_by(session, update_id)) is not None:
        return replayed
    if not (valid_name(name) and valid_trigger(trigger_word)):
        raise ValidationFailed("a training needs a name and a trigger word")
    user = _lock_user(session, user_id)
    check_can_start(session, user, limits, is_admin=is_admin, kind=JobKind.TRAINING)
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
        update_id=update_id,
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
    payments: PaymentsSettings | None = None,
    update_id: int | None = None,
) -> CreatedJob:
    """A queued HD (×4) job for portrait `index` (0-based) of the user's finished portrait job.

    HD does not count against the daily quota: it costs about 1% of a generation (one RRDB
    pass against 30 denoising steps for several candidates) and only enlarges a portrait the
    user already has; with payments on it costs PAYMENTS_PRICE_UPSCALE credits (0: free). The
    one-active-job rule still applies, so it cannot flood the gpu queue.
    """
    if (replayed := _created_by(session, update_id)) is not None:
        return replayed
    user = _lock_user(session, user_id)
    charge = check_can_start(
        session, user, limits, is_admin=is_admin, kind=JobKind.UPSCALE, payments=payments
    )
    source = owned_job(session, user_id, source_job_id)
    if source is not None and results_expired(source):
        raise ResultExpired(f"job {source_job_id}'s images expired")
    if (
        source is None
        or source.kind is not JobKind.PORTRAIT
        or source.status is not JobStatus.SUCCEEDED
        or not 0 <= index < len(source.result_blobs or [])
    ):
        raise ResultUnavailable(f"job {source_job_id} has no portrait {index}")
    params: dict[str, Any] = {"source_job_id": source.id, "index": index, "size": size}
    return _add(
        session,
        Job(user_id=user_id, kind=JobKind.UPSCALE, params=params, chat_id=chat_id),
        charge,
        update_id,
    )


def owned_job(session: Session, user_id: int, job_id: int) -> Job | None:
    """The job if it belongs to the user."""
    job = session.get(Job, job_id)
    return job if job is not None and job.user_id == user_id else None
