"""The one answer to "is this blob still referenced?", asked before any blob is deleted."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Select, String, cast, or_, select
from sqlalchemy.orm import Session

from db.models import Job, Photo, Style, StyleTraining, Template

_KEY_IN_TEXT = re.compile(r"[0-9a-f]{64}")


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

    def all_referenced(self) -> set[str]:
        """Every key some row points at, read in one pass per table (the garbage collection's
        view: the same columns as `is_referenced`)."""
        found: set[str] = set()
        columns: list[Any] = [
            (Photo.sha256,),
            (Style.lora_blob, Style.thumbnail_blob, Style.extra),
            (Template.image_blob, Template.thumbnail_blob),
            (Job.result_blobs, Job.params),
            (StyleTraining.image_blobs,),
        ]
        for group in columns:
            for row in self.session.execute(select(*group)).yield_per(1000):
                for value in row:
                    if value is None:
                        continue
                    text = value if isinstance(value, str) else json.dumps(value)
                    found.update(_KEY_IN_TEXT.findall(text))
        return found
