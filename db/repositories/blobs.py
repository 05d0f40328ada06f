"""The one answer to "is this blob still referenced?", asked before any blob is deleted."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Select, String, cast, or_, select
from sqlalchemy.orm import Session

from db.models import Job, Photo, Style, StyleTraining, Template


class BlobReferenceRepository:
    """Every column that holds a blob key: photos, style and template files, job inputs and
    results, training images (and a style's Kohya copy in `extra`)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def _references(self, key: str) -> list[Select[Any]]:
        # Blobs are content-addressed, so one key may be shared: the same selfie sent by two
        # users, a result forwarded back as a template, a catalog thumbnail. JSON columns are
        # matched on their text form; a 64-hex key cannot appear there by accident.
        return [
            select(Photo.id).where(Photo.sha256 == key),
            select(Style.id).where(
                or_(
                    Style.lora_blob == key,
                    Style.thumbnail_blob == key,
                    cast(Style.extra, String).contains(key),
                )
            ),
            select(Template.id).where(
                or_(Template.image_blob == key, Template.thumbnail_blob == key)
            ),
            select(Job.id).where(
                or_(
                    cast(Job.result_blobs, String).contains(key),
                    cast(Job.params, String).contains(key),
                )
            ),
            select(StyleTraining.id).where(cast(StyleTraining.image_blobs, String).contains(key)),
        ]

    def is_referenced(self, key: str) -> bool:
        """Whether any row still points at this blob."""
        return any(
            self.session.scalar(stmt.limit(1)) is not None for stmt in self._references(key)
        )

    def unreferenced(self, keys: Iterable[str]) -> list[str]:
        """The keys no row points at (safe to delete from the blob store), each once."""
        return [key for key in dict.fromkeys(keys) if not self.is_referenced(key)]
