"""Privacy: /forget erases a user's data; expired photos are removed on a schedule.

Both run inside the caller's transaction (they never commit). Blob bytes are deleted after the
rows are flushed and only when no remaining row points at the same content-addressed key."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core.blobstore import BlobStore
from db.models import Job, JobStatus, Photo, Style, StyleTraining, Template, User, UserSession
from db.repositories.photos import PhotoRepository
from domain.blobs import release

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ForgetReport:
    """What /forget removed."""

    photos: int
    jobs: int
    styles: int
    blobs: int


def forget_user(session: Session, blobs: BlobStore, user_id: int) -> ForgetReport:
    """Delete a user's photos, results, trainings, trained styles and conversation state.

    The user row stays (a ban or a custom quota must survive /forget) with its profile fields
    cleared. A job that is running right now is asked to stop and kept until its worker sees
    the flag; everything else goes at once.
    """
    keys: list[str] = []

    photos = session.scalars(select(Photo).where(Photo.user_id == user_id)).all()
    keys += [p.sha256 for p in photos]
    for photo in photos:
        session.delete(photo)

    jobs = session.scalars(select(Job).where(Job.user_id == user_id)).all()
    removed_jobs = 0
    for job in jobs:
        keys += list(job.result_blobs or [])
        # The pose the user sent and the skeleton map a worker extracted from it.
        for name in ("pose_blob", "pose_map_blob"):
            pose = (job.params or {}).get(name)
            if isinstance(pose, str):
                keys.append(pose)
        if job.status is JobStatus.RUNNING:
            job.cancel_requested = True
            continue
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
        keys += [k for k in (style.lora_blob, style.thumbnail_blob) if k]
        session.delete(style)

    templates = session.scalars(select(Template).where(Template.owner_id == user_id)).all()
    for template in templates:
        keys += [k for k in (template.image_blob, template.thumbnail_blob) if k]
        session.delete(template)

    session.execute(delete(UserSession).where(UserSession.user_id == user_id))
    user = session.get(User, user_id)
    if user is not None:
        user.username = None
        user.first_name = None

    deleted = release(session, blobs, keys)
    logger.info(
        "forgot user %s: %d photos, %d jobs, %d styles, %d blobs",
        user_id,
        len(photos),
        removed_jobs,
        len(styles),
        deleted,
    )
    return ForgetReport(photos=len(photos), jobs=removed_jobs, styles=len(styles), blobs=deleted)


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
