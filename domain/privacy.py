"""Privacy: /forget erases a user's data; expired photos are removed on a schedule.

Both run inside the caller's transaction (they never commit). Blob bytes are deleted after that
transaction commits (`domain.blobs.release`) and only when no remaining row points at the same
content-addressed key.

What /forget removes (docs/ARCHITECTURE.md, "Privacy"): every photo (selfies, template photos,
training images), every job with its results and the pose photo and skeleton map it used, every
training, every trained or uploaded style of the user with its LoRA in both layouts (diffusers
and the Kohya copy) and its thumbnail, the user's own templates, the conversation state, and
the profile fields. The gpu workers' copies go too: a worker's cached LoRA file is dropped when
its blob no longer exists (checked on every use, and pruned at the start of gpu jobs,
`domain.workerfiles`), and a training's checkpoint folder is removed by the worker when the
training is cancelled, or pruned when its training row is gone.

A job that is running at that moment is asked to stop and detached from the user at once (no
user, chat or inputs left on it); the worker checks the flag before it stores results, a
detached job that finishes anyway ends cancelled (`lifecycle.finish`), and the delivery step
discards whatever a detached job still produced (`discard_detached_job`; the sweep re-sends a
lost delivery message), so nothing is stored for or delivered to the forgotten user.

The user row stays (a ban or a custom quota must survive /forget) with its profile fields
cleared; `users.forgotten_at` marks it, and broadcasts skip it until the user writes again."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, cast, delete, func, or_, select
from sqlalchemy.orm import Session

from core.blobstore import BlobStore
from db.models import (
    FINAL_STATUSES,
    AuditEntry,
    Job,
    JobStatus,
    Payment,
    Photo,
    PhotoKind,
    Style,
    StyleTraining,
    Template,
    User,
    UserSession,
    WebhookDelivery,
)
from db.repositories.photos import PhotoRepository
from domain.billing import forget_billing
from domain.blobs import release
from domain.webhooks import emit_job_event

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ForgetReport:
    """What /forget removed."""

    photos: int
    jobs: int
    styles: int
    blobs: int
    # Status messages (chat, message id) of the jobs /forget cancelled, to be edited to say so.
    cancelled_messages: tuple[tuple[int, int], ...] = ()


def _job_keys(job: Job) -> list[str]:
    """The blobs a job points at: its results, the pose the user sent and its skeleton map."""
    keys = list(job.result_blobs or [])
    for name in ("pose_blob", "pose_map_blob"):
        pose = (job.params or {}).get(name)
        if isinstance(pose, str):
            keys.append(pose)
    return keys


def style_keys(style: Style) -> list[str]:
    """Every blob of a style: the LoRA (diffusers layout), its Kohya copy, the thumbnail."""
    kohya = (style.extra or {}).get("kohya_blob")
    return [k for k in (style.lora_blob, style.thumbnail_blob, kohya) if isinstance(k, str) and k]


def forget_user(
    session: Session, blobs: BlobStore, user_id: int, *, keep_payment_records: bool = False
) -> ForgetReport:
    """Delete a user's photos, results, trainings, trained styles and conversation state, and
    their credit ledger and payments (`domain.billing.forget_billing`; payment records stay
    when the operator must keep them).

    Queued jobs are cancelled (`job.cancelled` is emitted) and deleted; a running job is asked
    to stop and detached from the user (its worker owns the row until it ends, then the row
    and whatever it produced are discarded)."""
    keys: list[str] = []
    user = session.get(User, user_id, with_for_update=True, populate_existing=True)

    photos = session.scalars(select(Photo).where(Photo.user_id == user_id)).all()
    keys += [p.sha256 for p in photos]
    for photo in photos:
        session.delete(photo)

    # Locked, and read fresh: a worker finishing one of these jobs right now commits first, and
    # its results are then seen (and deleted) here.
    jobs = session.scalars(
        select(Job)
        .where(Job.user_id == user_id)
        .order_by(Job.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    removed_jobs = 0
    messages: list[tuple[int, int]] = []
    for job in jobs:
        keys += _job_keys(job)
        if job.is_active and job.chat_id is not None and job.status_message_id is not None:
            messages.append((job.chat_id, job.status_message_id))
        if job.status is JobStatus.RUNNING:
            job.cancel_requested = True
            # Nothing of the user stays on it: no owner, no chat, no inputs.
            job.user_id = None
            job.chat_id = None
            job.status_message_id = None
            job.params = {}
            continue
        if job.status is JobStatus.QUEUED:
            job.transition(JobStatus.CANCELLED)
            job.error_code = "cancelled"
            emit_job_event(session, job, "job.cancelled")
        session.delete(job)
        removed_jobs += 1

    trainings = session.scalars(
        select(StyleTraining).where(StyleTraining.user_id == user_id)
    ).all()
    for training in trainings:
        keys += list(training.image_blobs or [])
        session.delete(training)

    styles = session.scalars(select(Style).where(Style.owner_id == user_id)).all()
    for style in styles:
        keys += style_keys(style)
        session.delete(style)

    templates = session.scalars(select(Template).where(Template.owner_id == user_id)).all()
    for template in templates:
        keys += [k for k in (template.image_blob, template.thumbnail_blob) if k]
        session.delete(template)

    session.execute(delete(UserSession).where(UserSession.user_id == user_id))
    if user is not None:
        scrub_records(session, user)
        user.username = None
        user.first_name = None
    # Sets `forgotten_at` too: broadcasts skip the user from now on.
    forget_billing(session, user_id, keep_payment_records=keep_payment_records)

    deleted = release(session, blobs, keys)
    logger.info(
        "forgot user %s: %d photos, %d jobs, %d styles, %d blobs",
        user_id,
        len(photos),
        removed_jobs,
        len(styles),
        deleted,
    )
    return ForgetReport(
        photos=len(photos),
        jobs=removed_jobs,
        styles=len(styles),
        blobs=deleted,
        cancelled_messages=tuple(messages),
    )


# What stands in for a forgotten user's Telegram id and charge ids in kept records.
FORGOTTEN = "forgotten"
# Payload fields that identify a payer or a payment.
_ID_FIELDS = ("telegram_id", "user_id")
_CHARGE_FIELDS = ("charge_id",)


def _scrubbed(data: dict[str, Any]) -> dict[str, Any]:
    clean = dict(data)
    for name in _ID_FIELDS:
        if name in clean:
            clean[name] = None
    for name in _CHARGE_FIELDS:
        if clean.get(name):
            clean[name] = FORGOTTEN
    return clean


def scrub_records(session: Session, user: User) -> tuple[int, int]:
    """/forget in the records that stay: the user's webhook delivery payloads (job and payment
    events) and audit rows about them keep no Telegram id, user id or charge id (replaced by
    None / "forgotten"); amounts, times and outcomes stay. Returns (deliveries, audit rows)."""
    charge_ids = set(
        session.scalars(select(Payment.charge_id).where(Payment.user_id == user.id)).all()
    )
    payment_ids = set(session.scalars(select(Payment.id).where(Payment.user_id == user.id)))
    text = cast(WebhookDelivery.payload, String)
    matches = [
        text.contains(str(user.telegram_id)),
        text.contains(f'"user_id": {user.id}'),
        text.contains(f'"user_id":{user.id}'),
    ]
    deliveries = 0
    for delivery in session.scalars(select(WebhookDelivery).where(or_(*matches))):
        payload = delivery.payload or {}
        if (
            payload.get("user_id") == user.id
            or payload.get("telegram_id") == user.telegram_id
            or payload.get("charge_id") in charge_ids
        ):
            delivery.payload = _scrubbed(payload)
            deliveries += 1
    audits = 0
    targets = [f"user:{user.telegram_id}", *(f"payment:{p}" for p in payment_ids)]
    for entry in session.scalars(select(AuditEntry).where(AuditEntry.target.in_(targets))):
        if entry.target == f"user:{user.telegram_id}":
            entry.target = f"user:{FORGOTTEN}"
        entry.details = _scrubbed(entry.details or {})
        audits += 1
    return deliveries, audits


def is_detached(job: Job) -> bool:
    """Whether /forget detached this job from its user while it ran."""
    return job.user_id is None and job.cancel_requested


def discard_detached_job(session: Session, blobs: BlobStore, job_id: int) -> bool:
    """Delete a job /forget detached, once it has ended, with anything it produced; True if
    it did (the caller then delivers nothing)."""
    job = session.get(Job, job_id, with_for_update=True, populate_existing=True)
    if job is None or not is_detached(job) or job.status not in FINAL_STATUSES:
        return False
    keys = _job_keys(job)
    session.delete(job)
    release(session, blobs, keys)
    logger.info("job %s of a forgotten user discarded with %d result blobs", job_id, len(keys))
    return True


def expire_photos(session: Session, blobs: BlobStore, now: datetime) -> int:
    """Delete photos whose retention period ended before `now`; returns how many."""
    total = 0
    while True:
        batch = PhotoRepository(session).expired(now)
        if not batch:
            return total
        keys = [p.sha256 for p in batch]
        for photo in batch:
            session.delete(photo)
        release(session, blobs, keys)
        total += len(batch)


def expire_results(session: Session, blobs: BlobStore, now: datetime, retention: timedelta) -> int:
    """Delete the images of jobs that finished more than `retention` ago (results, HD files);
    the rows stay, marked `result_meta.expired_at`, so the chat can say the images expired.
    Returns how many jobs lost their images."""
    total = 0
    while True:
        batch = session.scalars(
            select(Job)
            .where(
                Job.finished_at.is_not(None),
                Job.finished_at <= now - retention,
                func.coalesce(cast(Job.result_blobs, String), "[]") != "[]",
            )
            .order_by(Job.id)
            .limit(500)
        ).all()
        if not batch:
            return total
        keys: list[str] = []
        for job in batch:
            keys += list(job.result_blobs or [])
            job.result_blobs = []
            job.result_meta = {**(job.result_meta or {}), "expired_at": now.isoformat()}
        release(session, blobs, keys)
        total += len(batch)


def results_expired(job: Job) -> bool:
    """Whether a finished job's images were deleted at the end of their retention."""
    return bool((job.result_meta or {}).get("expired_at"))


def drop_training_images(session: Session, blobs: BlobStore) -> int:
    """Delete the pictures of every training whose job has ended (succeeded, failed or
    cancelled; or is gone): the training's list and the photos it used, unless another
    training of the user still waiting or running uses the same picture. Returns how many
    trainings let go of their pictures."""
    ended = or_(StyleTraining.job_id.is_(None), Job.status.in_(FINAL_STATUSES))
    trainings = session.scalars(
        select(StyleTraining)
        .outerjoin(Job, Job.id == StyleTraining.job_id)
        .where(ended, func.coalesce(cast(StyleTraining.image_blobs, String), "[]") != "[]")
        .order_by(StyleTraining.id)
    ).all()
    for training in trainings:
        keys = list(training.image_blobs or [])
        training.image_blobs = []
        in_use: set[str] = set()
        if training.user_id is not None:
            others = session.scalars(
                select(StyleTraining.image_blobs)
                .join(Job, Job.id == StyleTraining.job_id)
                .where(
                    StyleTraining.user_id == training.user_id,
                    StyleTraining.id != training.id,
                    Job.status.not_in(FINAL_STATUSES),
                )
            ).all()
            in_use = {key for images in others for key in images or []}
            free = [key for key in keys if key not in in_use]
            if free:
                session.execute(
                    delete(Photo).where(
                        Photo.user_id == training.user_id,
                        Photo.kind == PhotoKind.TRAINING,
                        Photo.sha256.in_(free),
                    )
                )
        release(session, blobs, keys)
    if trainings:
        logger.info("training pictures deleted for %d ended trainings", len(trainings))
    return len(trainings)
