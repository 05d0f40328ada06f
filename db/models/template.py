"""Templates: photos whose faces are replaced by the user's (fixed-template portraits)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, JSONType, TimestampMixin, str_enum
from db.models.style import StyleOrigin


class Template(TimestampMixin, Base):
    """A template photo from the catalog or uploaded by an admin."""

    __tablename__ = "templates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(96), unique=True)
    names: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    category: Mapped[str] = mapped_column(String(32), default="other", index=True)
    image_blob: Mapped[str] = mapped_column(String(64))
    thumbnail_blob: Mapped[str | None] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    faces: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    origin: Mapped[StyleOrigin] = mapped_column(str_enum(StyleOrigin))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))

    def name_for(self, language: str) -> str:
        """The display name in a language, falling back to English then the slug."""
        return self.names.get(language) or self.names.get("en") or self.slug
