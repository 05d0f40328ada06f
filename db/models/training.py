"""Custom style LoRA trainings."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, JSONType, TimestampMixin


class StyleTraining(TimestampMixin, Base):
    """Inputs, progress and result of one style LoRA training (run by a training job)."""

    __tablename__ = "style_trainings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    name: Mapped[str] = mapped_column(String(96))
    trigger_word: Mapped[str] = mapped_column(String(64))
    base_model: Mapped[str] = mapped_column(String(16), default="majic")
    image_blobs: Mapped[list[str]] = mapped_column(JSONType, default=list)
    captions: Mapped[list[str]] = mapped_column(JSONType, default=list)
    # rank, learning rate, steps, resolution, seed.
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    step: Mapped[int] = mapped_column(Integer, default=0)
    last_loss: Mapped[float | None] = mapped_column(Float)
    # Folder of the resumable checkpoint (worker-local data dir) and its last step.
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    style_prompt: Mapped[str | None] = mapped_column(Text)
    style_id: Mapped[int | None] = mapped_column(ForeignKey("styles.id", ondelete="SET NULL"))
