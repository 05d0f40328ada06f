"""Photos users send: selfies (kept up to a limit, one face chosen), their own template photos,
and the images of a style training. The decoding and face detection happen before (on the
CPU, outside any transaction); these functions store what was found and the bytes.

Blobs are content-addressed: a photo's bytes are deleted only once no row points at them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from core.blobstore import BlobStore, sha256_hex
from core.settings import LimitsSettings
from db.base import utcnow
from db.models import Photo, PhotoKind, User
from db.repositories.jobs import JobRepository
from db.repositories.photos import PhotoRepository
from domain import conversations, uploads
from domain.blobs import release
from facechain.quality import SelfieAnalysis
from facechain.templates import TemplateAnalysis


@dataclass(frozen=True)
class TelegramFile:
    """Where the bytes came from (Telegram's ids of the upload)."""

    file_id: str
    file_unique_id: str


def _new_photo(
    session: Session,
    kind: PhotoKind,
    user_id: int,
    key: str,
    size: tuple[int, int, int],
    faces: list[dict[str, Any]],
    source: TelegramFile,
    retention_days: int,
    **fields: Any,
) -> Photo:
    """Add a photo row for bytes already in the blob store; `size` is (bytes, width, height)."""
    size_bytes, width, height = size
    return PhotoRepository(session).add(
        Photo(
            user_id=user_id,
            kind=kind,
            telegram_file_id=source.file_id,
            telegram_file_unique_id=source.file_unique_id,
            sha256=key,
            size_bytes=size_bytes,
            width=width,
            height=height,
            faces=faces,
            expires_at=utcnow() + timedelta(days=retention_days),
            **fields,
        )
    )


# ---- selfies ----


def _lock_user(session: Session, user_id: int) -> None:
    """Serialise a user's photo changes (PostgreSQL row lock; SQLite has one writer anyway)."""
    session.get(User, user_id, with_for_update=True, populate_existing=True)


@dataclass(frozen=True)
class StoredSelfie:
    """A selfie as kept: its id, how many the user has, and whether a face is still to choose."""

    photo_id: int
    count: int
    duplicate: bool
    needs_choice: bool


def _quality(analysis: SelfieAnalysis) -> dict[str, Any] | None:
    q = analysis.quality
    if q is None:
        return None
    return {
        "ok": q.ok,
        "reasons": list(q.reasons),
        "face_px": round(q.face_px, 1),
        "blur": round(q.blur, 1),
        "yaw": round(q.yaw, 1),
        "brightness": round(q.brightness, 1),
    }


def store_selfie(
    session: Session,
    blobs: BlobStore,
    user_id: int,
    data: bytes,
    analysis: SelfieAnalysis,
    faces: list[dict[str, Any]],
    selected: int | None,
    source: TelegramFile,
    limits: LimitsSettings,
) -> StoredSelfie:
    """Keep a selfie (bytes in the blob store), dropping the oldest beyond `max_selfies`.

    The user's row is locked first, so two selfies stored at once (two bot replicas, or a
    retried update) count and drop under the lock one after the other: neither deletes a row
    the other already deleted, and the count never goes over the limit."""
    _lock_user(session, user_id)
    repo = PhotoRepository(session)
    existing = repo.by_sha(user_id, PhotoKind.SELFIE, sha256_hex(data))
    selfies = list(repo.of_kind(user_id, PhotoKind.SELFIE))
    if existing is not None:
        return StoredSelfie(existing.id, len(selfies), True, existing.selected_face is None)
    uploads.count_upload(session, user_id, len(data), limits)
    key = blobs.put(data)
    # Selfies an active job still reads must stay; otherwise the oldest make room.
    busy = {
        pid
        for job in JobRepository(session).active_for_user(user_id)
        for pid in (job.params or {}).get("photo_ids", [])
    }
    excess = len(selfies) + 1 - limits.max_selfies
    dropped = [p for p in selfies if p.id not in busy][: max(0, excess)]
    for old in dropped:
        session.delete(old)
    photo = _new_photo(
        session,
        PhotoKind.SELFIE,
        user_id,
        key,
        (len(data), analysis.width, analysis.height),
        faces,
        source,
        limits.selfie_retention_days,
        selected_face=selected,
        quality=_quality(analysis),
    )
    release(session, blobs, [p.sha256 for p in dropped])
    return StoredSelfie(photo.id, len(selfies) + 1 - len(dropped), False, selected is None)


def choose_face(
    session: Session, user_id: int, photo_id: int, index: int, min_face_px: int
) -> str:
    """The user picked face `index` of a group selfie: "ok", "too_small" or "stale"."""
    photo = PhotoRepository(session).owned(user_id, photo_id, PhotoKind.SELFIE)
    if photo is None or not 0 <= index < len(photo.faces or []):
        return "stale"
    _, _, w, h = photo.faces[index]["box"]
    if min(w, h) < min_face_px:
        return "too_small"
    photo.selected_face = index
    return "ok"


def has_usable_selfie(session: Session, user_id: int) -> bool:
    """Whether the user has a selfie with a chosen face that has not expired."""
    return bool(PhotoRepository(session).usable_selfies(user_id, utcnow(), 1))


@dataclass(frozen=True)
class SelfieRow:
    """One line of /photos."""

    id: int
    added: str
    expires: str
    face_chosen: bool


def selfie_rows(session: Session, user_id: int) -> list[SelfieRow]:
    """The user's kept selfies, oldest first."""
    return [
        SelfieRow(
            p.id,
            p.created_at.strftime("%Y-%m-%d"),
            p.expires_at.strftime("%Y-%m-%d") if p.expires_at else "—",
            p.selected_face is not None,
        )
        for p in PhotoRepository(session).of_kind(user_id, PhotoKind.SELFIE)
    ]


def delete_selfie(session: Session, blobs: BlobStore, user_id: int, photo_id: int) -> bool:
    """Delete one of the user's selfies (row and bytes); False if it is not theirs."""
    repo = PhotoRepository(session)
    photo = repo.owned(user_id, photo_id, PhotoKind.SELFIE)
    if photo is None:
        return False
    key = photo.sha256
    repo.delete(photo)
    release(session, blobs, [key])
    return True


# ---- the user's own template photos ----


def store_template_photo(
    session: Session,
    blobs: BlobStore,
    user_id: int,
    data: bytes,
    analysis: TemplateAnalysis,
    source: TelegramFile,
    limits: LimitsSettings,
) -> tuple[int, list[list[float]]]:
    """Keep the user's own template photo with every face found; (photo id, face boxes).

    The oldest beyond `limits.max_template_photos` that no active job uses are deleted with
    their bytes; TemplatePhotoLimitReached or UploadLimitReached (nothing stored) otherwise."""
    _lock_user(session, user_id)
    dropped = uploads.template_photos_to_drop(session, user_id, limits)
    uploads.count_upload(session, user_id, len(data), limits)
    # Every face, in the detector's left-to-right order: the worker detects them again and
    # reads the chosen (1-based) numbers in that same order.
    records = [f.to_record() for f in analysis.faces]
    photo = _new_photo(
        session,
        PhotoKind.TEMPLATE,
        user_id,
        blobs.put(data),
        (len(data), analysis.width, analysis.height),
        records,
        source,
        limits.selfie_retention_days,
    )
    for old in dropped:
        session.delete(old)
    release(session, blobs, [p.sha256 for p in dropped])
    return photo.id, [r["box"] for r in records]


# ---- training images ----


def add_training_image(
    session: Session,
    blobs: BlobStore,
    user_id: int,
    data: bytes,
    size: tuple[int, int],
    source: TelegramFile,
    limits: LimitsSettings,
) -> int | None:
    """Store one training image and add it to the collecting flow; how many there are now
    (None when the set is full)."""
    conv = conversations.update(session, user_id)  # takes the row lock before reading the list
    ids = list(conv.data.get("train_photo_ids", []))
    if len(ids) >= limits.training_max_images:
        return None
    repo = PhotoRepository(session)
    existing = repo.by_sha(user_id, PhotoKind.TRAINING, sha256_hex(data))
    if existing is not None and existing.id in ids:
        return len(ids)
    uploads.count_upload(session, user_id, len(data), limits)
    photo = _new_photo(
        session,
        PhotoKind.TRAINING,
        user_id,
        blobs.put(data),
        (len(data), *size),
        [],
        source,
        limits.selfie_retention_days,
    )
    ids.append(photo.id)
    conversations.update(session, user_id, train_photo_ids=ids)
    return len(ids)


def discard_training_images(
    session: Session, blobs: BlobStore, user_id: int, photo_ids: list[int]
) -> None:
    """Forget collected training images the user abandoned."""
    repo = PhotoRepository(session)
    keys = []
    for pid in photo_ids:
        photo = repo.owned(user_id, pid, PhotoKind.TRAINING)
        if photo is not None:
            keys.append(photo.sha256)
            session.delete(photo)
    release(session, blobs, keys)
