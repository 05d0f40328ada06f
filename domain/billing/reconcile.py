"""Reconciling the payments with Telegram's Star transactions."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Payment, ServiceState
from domain.billing.invoices import _payer
from domain.billing.payments import PaymentResult, record_payment
from domain.billing.refunds import RefundResult, refund_payment

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StarPayment:
    """A payment as Telegram's Stars transactions list it (`getStarTransactions`)."""

    charge_id: str
    telegram_id: int
    payload: str
    stars: int
    date: datetime


# The service_state row of reconcile's place in Telegram's Stars history.
STAR_CURSOR = "payments.star_transactions"


@dataclass(frozen=True)
class StarCursor:
    """How far reconcile has read Telegram's Stars transactions (chronological, oldest first):
    `offset` transactions read, the last of them `last` (its kind and id) to check that the
    history still starts the same way before reading on from it."""

    offset: int = 0
    last: str | None = None


def star_cursor(session: Session) -> StarCursor:
    """Reconcile's place in the Stars history (the start when it never ran)."""
    row = session.get(ServiceState, STAR_CURSOR)
    if row is None:
        return StarCursor()
    last = row.value.get("last")
    return StarCursor(int(row.value.get("offset", 0)), str(last) if last else None)


def save_star_cursor(session: Session, cursor: StarCursor) -> None:
    """Keep reconcile's place (the caller holds the reconcile lock)."""
    value = {"offset": cursor.offset, "last": cursor.last}
    row = session.get(ServiceState, STAR_CURSOR, with_for_update=True)
    if row is None:
        session.add(ServiceState(name=STAR_CURSOR, value=value))
    else:
        row.value = value


@dataclass(frozen=True)
class Reconciled:
    """What a reconciliation recorded: lost payments credited, lost refunds debited, and lost
    payments that match no invoice we issued (kept, nothing credited)."""

    credited: list[PaymentResult] = field(default_factory=list)
    refunded: list[RefundResult] = field(default_factory=list)
    unmatched: list[PaymentResult] = field(default_factory=list)

    @property
    def stars(self) -> int:
        return sum(r.stars for r in self.credited)

    @property
    def refunded_stars(self) -> int:
        return sum(r.stars for r in self.refunded)

    def extend(self, other: Reconciled) -> None:
        """Add what a later batch of the same run recorded."""
        self.credited.extend(other.credited)
        self.refunded.extend(other.refunded)
        self.unmatched.extend(other.unmatched)


def _recorded_charges(session: Session, charge_ids: Collection[str]) -> set[str]:
    """Which of these charge ids have a payment row (asked in chunks the database accepts)."""
    ids = sorted(set(charge_ids))
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        found.update(
            session.scalars(select(Payment.charge_id).where(Payment.charge_id.in_(chunk)))
        )
    return found


def reconcile_payments(
    session: Session,
    received: Sequence[StarPayment],
    refunded: Collection[str] = (),
    cursor: StarCursor | None = None,
) -> Reconciled:
    """Credit the payments Telegram made that were never recorded (a `successful_payment`
    update lost with a crashed process), each exactly once like any other (`record_payment`),
    (or keep it unmatched, crediting nothing, when it matches no invoice we issued), and record
    the refunds Telegram made of recorded payments (`refunded`: charge ids) whose
    `refunded_payment` update was lost, like that update would (`refund_payment`).

    Left alone: payments already recorded, payers this bot never saw, and payments made before
    the payer's /forget (their record may have been deleted on purpose). `cursor`, when given,
    is kept in the same transaction: the place in the history these transactions end at."""
    found = Reconciled()
    if cursor is not None:
        save_star_cursor(session, cursor)
    if refunded:
        lost = session.scalars(
            select(Payment.id).where(
                Payment.charge_id.in_(sorted(refunded)), Payment.refunded_at.is_(None)
            )
        ).all()
        for payment_id in lost:
            refund = refund_payment(session, payment_id, "telegram", "reconcile")
            if not refund.duplicate:
                found.refunded.append(refund)
                logger.warning(
                    "payment %s was refunded at Telegram but never recorded: %d credits "
                    "debited now, %d already spent",
                    refund.charge_id,
                    refund.debited,
                    refund.shortfall,
                )
    recorded = _recorded_charges(session, [item.charge_id for item in received])
    for item in received:
        if item.charge_id in recorded:
            continue
        recorded.add(item.charge_id)
        user = _payer(session, item.telegram_id)
        if user is None:
            logger.warning("payment %s: unknown payer %s", item.charge_id, item.telegram_id)
            continue
        if user.forgotten_at is not None and item.date <= user.forgotten_at:
            continue
        result = record_payment(
            session, item.telegram_id, item.payload, item.stars, item.charge_id
        )
        if result.duplicate:
            continue
        if result.unmatched is not None:
            logger.warning(
                "payment %s was never recorded and matches no invoice (%s): kept, nothing "
                "credited",
                item.charge_id,
                result.unmatched,
            )
            found.unmatched.append(result)
        else:
            logger.warning("payment %s was never recorded: credited now", item.charge_id)
            found.credited.append(result)
    return found
