"""Photos users sent: selfies, their own templates, training images."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, JSONType, TimestampMixin, UTCDateTime, str_enum


class PhotoKind(enum.StrEnum):
    SELFIE = "selfie"
    TEMPLATE = "template"
    TRAINING = "training"


class Photo(TimestampMixin, Base):
    """One image a user sent, its bytes in the blob store under `sha256`."""

    __tablename__ = "photos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[PhotoKind] = mapped_column(str_enum(PhotoKind))
    telegram_file_id: Mapped[str | None] = mapped_column(String(256))
    telegram_file_unique_id: Mapped[str | None] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    # [{"box": [x, y, w, h], "landmarks": [[x, y] * 5], "score": s}, ...] left to right.
    faces: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    # 0-based index into `faces` of the face to use; None until known.
    selected_face: Mapped[int | None] = mapped_column(Integer)
    quality: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
