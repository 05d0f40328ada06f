"""Paid generations: Star packs, payments, and the append-only credit ledger.

A user's balance (`users.credits`) moves only together with a `LedgerEntry`, under the user's
row lock, so the sum of a user's ledger deltas always equals the balance
(`domain.billing.ledger_mismatches` checks it). Ledger rows are never updated or deleted,
except by /forget, which removes the user's rows and zeroes the balance together."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, TimestampMixin, UTCDateTime, str_enum, utcnow


class LedgerKind(enum.StrEnum):
    """Why credits moved."""

    PURCHASE = "purchase"  # a pack paid in Stars (+)
    SPEND = "spend"  # a job created beyond the free quota (-)
    GIVEBACK = "giveback"  # that job failed through no fault of the user, or never ran (+)
    REFUND = "refund"  # a payment refunded: its credits debited, as far as unspent (-)
    GRANT = "grant"  # an admin's manual correction (+ or -)


class ChargeKind(enum.StrEnum):
    """What a job was charged at creation (`Job.charge`); None: nothing (admins, free kinds)."""

    QUOTA = "quota"  # one slot of today's free daily quota
    CREDITS = "credits"  # `Job.charge_credits` credits, with a SPEND ledger row


class Pack(TimestampMixin, Base):
    """A pack of generation credits sold for Telegram Stars."""

    __tablename__ = "packs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(32))
    credits: Mapped[int] = mapped_column(Integer)
    stars: Mapped[int] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    position: Mapped[int] = mapped_column(Integer, default=0)


class Invoice(Base):
    """One invoice the bot issued for a pack: the only terms a payment is credited from.

    Its `payload` is all Telegram carries (`inv:<random id>`; an invoice issued before invoices
    were rows carries the old `pk:...` text, matched during a grace period only). Paid once:
    `paid_at` is set by the payment that credited it."""

    __tablename__ = "invoices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    payload: Mapped[str] = mapped_column(String(128), unique=True)
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    telegram_id: Mapped[int] = mapped_column(BigInteger)
    pack_id: Mapped[int | None] = mapped_column(ForeignKey("packs.id", ondelete="SET NULL"))
    title: Mapped[str] = mapped_column(String(32))
    credits: Mapped[int] = mapped_column(Integer)
    stars: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(8))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Payment(Base):
    """One successful Stars payment: exactly one per Telegram charge id."""

    __tablename__ = "payments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    charge_id: Mapped[str] = mapped_column(String(255), unique=True)
    provider_charge_id: Mapped[str | None] = mapped_column(String(255))
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    # Kept apart from the user row: the refund call needs it, and so do bookkeeping records.
    telegram_id: Mapped[int] = mapped_column(BigInteger)
    pack_id: Mapped[int | None] = mapped_column(ForeignKey("packs.id", ondelete="SET NULL"))
    title: Mapped[str] = mapped_column(String(32))
    stars: Mapped[int] = mapped_column(Integer)
    credits: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    refunded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Credits the refund took back, and those it could not (already spent).
    refund_debited: Mapped[int | None] = mapped_column(Integer)
    refund_shortfall: Mapped[int | None] = mapped_column(Integer)
    # The invoice it paid (None: its payload names none), and why it credited nothing when it
    # does not match one (`domain.billing.UNMATCHED_REASONS`); None: credited from its invoice.
    invoice_id: Mapped[int | None] = mapped_column(
        ForeignKey("invoices.id", ondelete="SET NULL"), index=True
    )
    unmatched: Mapped[str | None] = mapped_column(String(16))


class LedgerEntry(Base):
    """One movement of a user's credits, with its cause (append-only)."""

    __tablename__ = "ledger"
    # A job is charged and given back at most once; a payment bought and refunded once.
    __table_args__ = (
        UniqueConstraint("kind", "job_id", name="uq_ledger_kind_job"),
        UniqueConstraint("kind", "payment_id", name="uq_ledger_kind_payment"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[LedgerKind] = mapped_column(str_enum(LedgerKind))
    delta: Mapped[int] = mapped_column(Integer)
    # The balance right after this movement.
    balance: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    payment_id: Mapped[int | None] = mapped_column(ForeignKey("payments.id", ondelete="SET NULL"))
    actor: Mapped[str | None] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
