"""Users and their bot conversation state."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Date, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, JSONType, TimestampMixin, UTCDateTime


class User(TimestampMixin, Base):
    """A Telegram user of the bot."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    telegram_id: Mapped[int] = mapped_column(BigInteger, unique=True, index=True)
    username: Mapped[str | None] = mapped_column(String(64))
    first_name: Mapped[str | None] = mapped_column(String(128))
    # Language from Telegram's client until the user picks one with /lang.
    language: Mapped[str] = mapped_column(String(8), default="en")
    language_chosen: Mapped[bool] = mapped_column(Boolean, default=False)
    is_banned: Mapped[bool] = mapped_column(Boolean, default=False)
    # Banned users are answered once, then ignored.
    ban_notified: Mapped[bool] = mapped_column(Boolean, default=False)
    can_train: Mapped[bool] = mapped_column(Boolean, default=False)
    # None = the configured default daily quota.
    daily_quota: Mapped[int | None] = mapped_column(Integer)
    # Who the portraits show ("man", "woman", "boy", "girl", "mature_man", "mature_woman");
    # None = decided by FairFace from the selfies (facechain.prompts.subject_from_prediction).
    subject: Mapped[str | None] = mapped_column(String(16))
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Paid generation credits, moved only with a ledger row under this row's lock
    # (`domain.billing`), so it always equals the sum of the user's ledger deltas.
    credits: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When the user last ran /forget (invoices issued before it are refused at checkout).
    forgotten_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Bytes of photos the user stored on `upload_day` (UTC), for LIMITS_UPLOAD_BYTES_PER_DAY
    # (`domain.uploads`); a counter, so deleting photos gives nothing back.
    upload_day: Mapped[date | None] = mapped_column(Date)
    upload_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class UserSession(Base):
    """Conversation state of one user, in the database so restarts and replicas share it."""

    __tablename__ = "user_sessions"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    state: Mapped[str] = mapped_column(String(32), default="idle")
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012
