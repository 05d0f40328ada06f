"""Photos users sent (selfies, own templates, training images) and blob reference checks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import String, cast, or_, select

from db.models import Job, Photo, PhotoKind, Style, StyleTraining, Template
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

    def unreferenced(self, keys: Iterable[str]) -> list[str]:
        """The blob keys no remaining row points at (safe to delete from the blob store).

        Blobs are content-addressed, so one key may be shared: the same selfie sent by two
        users, a result forwarded back as a template, a catalog thumbnail. JSON list columns
        are matched on their text form; a 64-hex key cannot appear there by accident.
        """
        free = []
        for key in dict.fromkeys(keys):
            used = (
                self.session.scalar(select(Photo.id).where(Photo.sha256 == key).limit(1))
                or self.session.scalar(
                    select(Style.id)
                    .where(or_(Style.thumbnail_blob == key, Style.lora_blob == key))
                    .limit(1)
                )
                or self.session.scalar(
                    select(Template.id)
                    .where(or_(Template.image_blob == key, Template.thumbnail_blob == key))
                    .limit(1)
                )
                or self.session.scalar(
                    select(Job.id)
                    .where(
                        or_(
                            cast(Job.result_blobs, String).contains(key),
                            cast(Job.params, String).contains(key),
                        )
                    )
                    .limit(1)
                )
                or self.session.scalar(
                    select(StyleTraining.id)
                    .where(cast(StyleTraining.image_blobs, String).contains(key))
                    .limit(1)
                )
            )
            if not used:
                free.append(key)
        return free
