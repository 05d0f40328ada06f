"""What a gpu job reads besides its params: its selfies, style, template or source portrait.

Each read is one short transaction returning plain data (or a detached row), so no transaction
stays open while the engine runs. A row that went away meanwhile (/forget, a deleted style)
raises NotFound, which fails the job with a clear code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import NotFound
from db.models import Job, JobKind, Photo, Style, Template


@dataclass(frozen=True)
class SelfieRecord:
    """A stored selfie: its blob and the face the user chose."""

    photo_id: int
    sha256: str
    face: dict[str, Any]


def selfies(session: Session, user_id: int | None, photo_ids: Sequence[int]) -> list[SelfieRecord]:
    """The job's selfies in order, each with its chosen face (the first when none was chosen)."""
    rows = session.scalars(select(Photo).where(Photo.id.in_(list(photo_ids)))).all()
    found = {p.id: p for p in rows}
    out = []
    for pid in photo_ids:
        photo = found.get(pid)
        if photo is None or (user_id is not None and photo.user_id != user_id):
            raise NotFound(f"photo {pid} is gone", photo_id=pid)
        faces = list(photo.faces)
        out.append(SelfieRecord(pid, photo.sha256, faces[photo.selected_face or 0]))
    return out


def style(session: Session, style_id: int | None) -> Style:
    """The job's style row (detached once the transaction ends)."""
    row = session.get(Style, style_id) if style_id is not None else None
    if row is None:
        raise NotFound(f"style {style_id} is gone", style_id=style_id)
    return row


def template_blob(
    session: Session,
    user_id: int | None,
    template_id: int | None,
    template_photo_id: int | None,
) -> str:
    """Blob key of the template image: the user's own photo, else a catalog template."""
    if template_photo_id is not None:
        photo = session.scalar(
            select(Photo).where(Photo.id == template_photo_id, Photo.user_id == user_id)
        )
        if photo is None:
            raise NotFound("template photo is gone")
        return photo.sha256
    template = session.get(Template, template_id)
    if template is None:
        raise NotFound("template is gone")
    return template.image_blob


def upscale_source(session: Session, user_id: int | None, source_job_id: int, index: int) -> str:
    """Blob key of the portrait to upscale (the user's own finished portrait job)."""
    source = session.get(Job, source_job_id)
    if (
        source is None
        or source.user_id != user_id
        or source.kind is not JobKind.PORTRAIT
        or not 0 <= index < len(source.result_blobs or [])
    ):
        raise NotFound("the portrait to upscale is gone", source=source_job_id)
    return str(source.result_blobs[index])
