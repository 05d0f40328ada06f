"""The inbox of Telegram updates: each one written before Telegram is told it was received.

A polled update is stored before the next getUpdates confirms it (the offset moves on), a relayed
one before its broker message is acknowledged, a webhook one before the route answers 200. The
bot marks it `done_at` once its handler finished; a bot that starts handles the unfinished ones
first (docs/ARCHITECTURE.md, "Durable updates")."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, JSONType, UTCDateTime, utcnow


class InboundUpdate(Base):
    __tablename__ = "updates"

    # Telegram's update_id: unique per bot, so a second copy of an update is never stored.
    update_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
