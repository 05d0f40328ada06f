"""Refunds: debit a payment's credits as far as the user has not spent them."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import NotFound
from db.base import lock_for_write, utcnow
from db.models import AuditEntry, LedgerKind, Payment, User
from domain.audit import audit
from domain.billing.ledger import _move
from domain.billing.payments import payment_payload
from domain.webhooks import emit_event

logger = logging.getLogger(__name__)

# ---- refunds ----


@dataclass(frozen=True)
class RefundTarget:
    """What the Bot API's refundStarPayment needs."""

    payment_id: int
    telegram_id: int
    charge_id: str
    refunded: bool


def _payment(session: Session, ref: int | str, *, lock: bool = False) -> Payment:
    stmt = select(Payment).where(
        Payment.id == ref if isinstance(ref, int) else Payment.charge_id == ref
    )
    if lock:
        stmt = stmt.with_for_update()
    payment = session.scalar(stmt.execution_options(populate_existing=True))
    if payment is None:
        raise NotFound(f"payment {ref} not found")
    return payment


def refund_target(session: Session, ref: int | str) -> RefundTarget:
    """The payment (by id or charge id) an admin wants to refund."""
    payment = _payment(session, ref)
    return RefundTarget(
        payment.id, payment.telegram_id, payment.charge_id, payment.refunded_at is not None
    )


@dataclass(frozen=True)
class RefundResult:
    """What a refund did: credits debited and those already spent (not debited)."""

    payment_id: int
    charge_id: str
    stars: int
    debited: int
    shortfall: int
    balance: int | None
    duplicate: bool
    telegram_id: int = 0
    # The payer's language when they are still known (to tell them), else None.
    language: str | None = None


def refund_payment(
    session: Session, ref: int | str, actor: str, note: str | None = None
) -> RefundResult:
    """Record a payment's refund (once): debit its credits as far as the balance holds them.

    A balance never goes negative: credits already spent stay spent and are reported as the
    `shortfall` (the admin's reply and the admin API show it). A payment made before the
    payer's /forget debits nothing: /forget already took its credits, and newer credits are
    another payment's.

    The balance is read and debited in one write transaction: on SQLite (no row locks) the
    database's write lock is taken first (`db.base.lock_for_write`), so a spend cannot slip in
    between; and a debit the database did not make is never recorded as one."""
    lock_for_write(session)
    payment = _payment(session, ref, lock=True)
    if payment.refunded_at is not None:
        return RefundResult(
            payment.id,
            payment.charge_id,
            payment.stars,
            payment.refund_debited or 0,
            payment.refund_shortfall or 0,
            None,
            True,
            payment.telegram_id,
        )
    balance: int | None = None
    debited = 0
    # Credits /forget already took (forfeited with the rest): nothing of them is left to debit.
    forfeited = 0
    language: str | None = None
    if payment.user_id is not None:
        user = session.get(User, payment.user_id, with_for_update=True, populate_existing=True)
        if user is not None:
            language = user.language
            if user.forgotten_at is not None and payment.created_at <= user.forgotten_at:
                forfeited = payment.credits
            else:
                debited = min(payment.credits, max(user.credits, 0))
            balance = _move(
                session,
                user.id,
                LedgerKind.REFUND,
                -debited,
                payment_id=payment.id,
                actor=actor,
                note=note,
            )
            if balance is None:
                # The balance moved since it was read (impossible under the lock above):
                # nothing was debited, so none is recorded; all of it is the shortfall.
                logger.error("payment %s: refund debit refused by the balance", payment.id)
                debited = 0
    shortfall = payment.credits - debited - forfeited
    payment.refunded_at = utcnow()
    payment.refund_debited = debited
    payment.refund_shortfall = shortfall
    audit(
        session,
        actor,
        "payment.refund",
        f"payment:{payment.id}",
        charge_id=payment.charge_id,
        stars=payment.stars,
        debited=debited,
        shortfall=shortfall,
    )
    emit_event(session, "payment.refunded", payment_payload(payment))
    if shortfall:
        logger.warning(
            "payment %s refunded: %d of %d credits were already spent",
            payment.charge_id,
            shortfall,
            payment.credits,
        )
    return RefundResult(
        payment.id,
        payment.charge_id,
        payment.stars,
        debited,
        shortfall,
        balance,
        False,
        payment.telegram_id,
        language,
    )


UNRECORDED_REFUND = "payment.refund_unrecorded"


def record_unrecorded_refund(
    session: Session, charge_id: str, telegram_id: int, stars: int, payload: str
) -> bool:
    """Telegram refunded a payment this bot holds no record of (its `successful_payment`
    update was lost, or the record went with the payer's /forget): nothing to debit, so the
    refund is only written to the audit log, once per charge id. Whether it is new."""
    target = f"charge:{charge_id}"[:128]
    seen = session.scalar(
        select(AuditEntry.id).where(
            AuditEntry.action == UNRECORDED_REFUND, AuditEntry.target == target
        )
    )
    if seen is not None:
        return False
    audit(
        session,
        "telegram",
        UNRECORDED_REFUND,
        target,
        charge_id=charge_id,
        telegram_id=telegram_id,
        stars=stars,
        payload=payload[:128],
    )
    logger.warning(
        "payment %s of %s (%d Stars) was refunded but never recorded here: nothing debited",
        charge_id,
        telegram_id,
        stars,
    )
    return True
