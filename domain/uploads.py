"""Per-user storage caps on the photos users send: bytes stored per UTC day, and how many of
their own template photos are kept.

Each check runs in the transaction that stores the photo, under the user's row lock, before
the bytes reach the blob store: a refused photo leaves nothing behind."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from core.errors import NotFound, TemplatePhotoLimitReached, UploadLimitReached
from core.settings import LimitsSettings
from db.base import utcnow
from db.models import Photo, PhotoKind, User
from db.repositories.jobs import JobRepository
from db.repositories.photos import PhotoRepository

MIB = 1024 * 1024


def count_upload(
    session: Session, user_id: int, size: int, limits: LimitsSettings, now: datetime | None = None
) -> int:
    """Count `size` stored bytes against the user's day (UTC); the day's total.

    Raises UploadLimitReached (nothing counted) when it would go over
    `limits.upload_bytes_per_day`."""
    user = session.get(User, user_id, with_for_update=True, populate_existing=True)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    today = (now or utcnow()).date()
    used = user.upload_bytes if user.upload_day == today else 0
    if used + size > limits.upload_bytes_per_day:
        raise UploadLimitReached(
            f"user {user_id} stored {used} bytes today; {size} more is over the daily limit",
            limit_mb=limits.upload_bytes_per_day // MIB,
        )
    user.upload_day = today
    user.upload_bytes = used + size
    return user.upload_bytes


def template_photos_to_drop(session: Session, user_id: int, limits: LimitsSettings) -> list[Photo]:
    """The user's oldest template photos to delete so one more fits in
    `limits.max_template_photos` (photos an active job uses stay).

    Raises TemplatePhotoLimitReached when every kept one is in use (call it under the user's
    row lock, before storing anything)."""
    kept = list(PhotoRepository(session).of_kind(user_id, PhotoKind.TEMPLATE))
    excess = len(kept) + 1 - limits.max_template_photos
    if excess <= 0:
        return []
    busy = {
        (job.params or {}).get("template_photo_id")
        for job in JobRepository(session).active_for_user(user_id)
    }
    free = [p for p in kept if p.id not in busy]
    if len(free) < excess:
        raise TemplatePhotoLimitReached(
            f"user {user_id}'s {len(kept)} template photos are in use",
            max=limits.max_template_photos,
        )
    return free[:excess]
