"""Styles: a prompt fragment, a base model and an optional style LoRA."""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, JSONType, TimestampMixin, str_enum


class StyleOrigin(enum.StrEnum):
    CATALOG = "catalog"
    TRAINED = "trained"
    UPLOADED = "uploaded"


class BaseModelName(enum.StrEnum):
    """The SD1.5 base checkpoint a style is drawn on; FACT ships adapters for these
    (reference §1)."""

    FILM = "film"
    MAJIC = "majic"


class Style(TimestampMixin, Base):
    """A portrait style users pick."""

    __tablename__ = "styles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(96), unique=True)
    # {"en": ..., "zh": ..., "ru": ...}
    names: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    category: Mapped[str] = mapped_column(String(32), default="other", index=True)
    base_model: Mapped[BaseModelName] = mapped_column(str_enum(BaseModelName))
    prompt: Mapped[str] = mapped_column(Text, default="")
    # "cloth" (no LoRA: FaceChain's cloth template) or "style" (LoRA styles).
    prompt_template: Mapped[str] = mapped_column(String(16), default="style")
    lora_model_id: Mapped[str | None] = mapped_column(String(128))
    lora_revision: Mapped[str | None] = mapped_column(String(32))
    lora_file: Mapped[str | None] = mapped_column(String(256))
    # Uploaded or trained LoRA bytes in the blob store.
    lora_blob: Mapped[str | None] = mapped_column(String(64))
    lora_weight: Mapped[float] = mapped_column(Float, default=0.5)
    thumbnail_blob: Mapped[str | None] = mapped_column(String(64))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    origin: Mapped[StyleOrigin] = mapped_column(str_enum(StyleOrigin))
    # Trained styles belong to their trainer (shown only to them unless an admin publishes).
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    extra: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

    def name_for(self, language: str) -> str:
        """The display name in a language, falling back to English then the slug."""
        return self.names.get(language) or self.names.get("en") or self.slug
