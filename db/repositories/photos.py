"""Photos users sent (selfies, own templates, training images)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import or_, select

from db.models import Photo, PhotoKind
from db.repositories.base import RepositoryBase


class PhotoRepository(RepositoryBase[Photo]):
    model = Photo

    def owned(self, user_id: int, photo_id: int, kind: PhotoKind | None = None) -> Photo | None:
        """The photo if it exists and belongs to this user (and is of this kind)."""
        photo = self.session.get(Photo, photo_id)
        if photo is None or photo.user_id != user_id:
            return None
        if kind is not None and photo.kind != kind:
            return None
        return photo

    def of_kind(self, user_id: int, kind: PhotoKind) -> Sequence[Photo]:
        """A user's photos of one kind, oldest first."""
        return self.session.scalars(
            select(Photo).where(Photo.user_id == user_id, Photo.kind == kind).order_by(Photo.id)
        ).all()

    def usable_selfies(self, user_id: int, now: datetime, limit: int) -> Sequence[Photo]:
        """Selfies with a chosen face that have not expired, newest first."""
        return self.session.scalars(
            select(Photo)
            .where(
                Photo.user_id == user_id,
                Photo.kind == PhotoKind.SELFIE,
                Photo.selected_face.is_not(None),
                or_(Photo.expires_at.is_(None), Photo.expires_at > now),
            )
            .order_by(Photo.id.desc())
            .limit(limit)
        ).all()

    def by_sha(self, user_id: int, kind: PhotoKind, sha256: str) -> Photo | None:
        """The user's photo of this kind with exactly these bytes, if any."""
        return self.session.scalar(
            select(Photo)
            .where(Photo.user_id == user_id, Photo.kind == kind, Photo.sha256 == sha256)
            .limit(1)
        )

    def expired(self, now: datetime, limit: int = 500) -> Sequence[Photo]:
        """Photos whose retention period is over."""
        return self.session.scalars(
            select(Photo)
            .where(Photo.expires_at.is_not(None), Photo.expires_at <= now)
            .order_by(Photo.id)
            .limit(limit)
        ).all()

    def for_user(self, user_id: int) -> Sequence[Photo]:
        return self.session.scalars(select(Photo).where(Photo.user_id == user_id)).all()
