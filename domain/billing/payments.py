"""Recording a successful payment from its invoice row only, exactly once per charge id; a
payment that matches no invoice is kept, credits nothing and is audited."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import NotFound
from db.base import utcnow
from db.models import Invoice, LedgerKind, Payment, User
from domain.audit import audit
from domain.billing.invoices import _payer, find_invoice
from domain.billing.ledger import CURRENCY, _move
from domain.webhooks import emit_event

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PaymentResult:
    """What a successful payment did: credited now, a duplicate that credited nothing, or a
    payment that matches no invoice we issued (`unmatched`: why; nothing credited)."""

    payment_id: int
    credits: int
    stars: int
    balance: int
    duplicate: bool
    telegram_id: int = 0
    language: str | None = None
    charge_id: str = ""
    unmatched: str | None = None


def _mismatch(invoice: Invoice | None, user: User, total_amount: int, currency: str) -> str | None:
    """Why a payment cannot be credited from this invoice (None: it can)."""
    if invoice is None:
        return "no_invoice"
    if invoice.user_id != user.id:
        return "payer"
    if currency != invoice.currency:
        return "currency"
    if total_amount != invoice.stars:
        return "amount"
    if invoice.paid_at is not None:
        return "paid"
    return None


def record_payment(
    session: Session,
    telegram_id: int,
    payload: str,
    total_amount: int,
    charge_id: str,
    provider_charge_id: str | None = None,
    currency: str = CURRENCY,
) -> PaymentResult:
    """Credit a successful payment from the invoice it paid, exactly once per Telegram charge
    id and once per invoice.

    The user paid, so this credits whatever happened since the pre-checkout (a ban, a pack
    change): the credits of the invoice row. A payment whose payload names no invoice we
    issued, or whose payer, amount or currency differs from it, or of an invoice already paid,
    credits nothing: it is kept with the reason (`Payment.unmatched`) and audited
    (`payment.unmatched`) for an admin to look into (and refund)."""
    user = _payer(session, telegram_id)
    if user is None:
        raise NotFound(f"user {telegram_id} not found", telegram_id=telegram_id)
    # The user's row lock serialises this with their other credit movements and duplicates.
    session.get(User, user.id, with_for_update=True)
    existing = session.scalar(select(Payment).where(Payment.charge_id == charge_id))
    if existing is not None:
        logger.info("payment %s: duplicate update credited nothing", charge_id)
        return PaymentResult(
            existing.id,
            existing.credits,
            existing.stars,
            user.credits,
            True,
            telegram_id,
            user.language,
            charge_id,
            existing.unmatched,
        )
    invoice = find_invoice(session, payload)
    reason = _mismatch(invoice, user, total_amount, currency)
    payment = Payment(
        charge_id=charge_id,
        provider_charge_id=provider_charge_id,
        user_id=user.id,
        telegram_id=telegram_id,
        invoice_id=invoice.id if invoice is not None else None,
        pack_id=invoice.pack_id if invoice is not None and reason is None else None,
        title=invoice.title if invoice is not None and reason is None else "unmatched",
        stars=total_amount,
        credits=0 if reason is not None or invoice is None else invoice.credits,
        unmatched=reason,
    )
    session.add(payment)
    session.flush()
    if reason is not None:
        audit(
            session,
            "telegram",
            "payment.unmatched",
            f"payment:{payment.id}",
            charge_id=charge_id,
            telegram_id=telegram_id,
            stars=total_amount,
            currency=currency,
            payload=payload[:128],
            invoice_id=payment.invoice_id,
            reason=reason,
        )
        logger.warning(
            "payment %s of %s (%d %s) credited nothing: %s",
            charge_id,
            telegram_id,
            total_amount,
            currency,
            reason,
        )
        return PaymentResult(
            payment.id,
            0,
            total_amount,
            user.credits,
            False,
            telegram_id,
            user.language,
            charge_id,
            reason,
        )
    assert invoice is not None
    invoice.paid_at = utcnow()
    new_balance = _move(
        session, user.id, LedgerKind.PURCHASE, payment.credits, payment_id=payment.id
    )
    assert new_balance is not None
    emit_event(session, "payment.succeeded", payment_payload(payment))
    logger.info("payment %s: %d credits for %d Stars", charge_id, payment.credits, total_amount)
    return PaymentResult(
        payment.id,
        payment.credits,
        total_amount,
        new_balance,
        False,
        telegram_id,
        user.language,
        charge_id,
    )


def payment_payload(payment: Payment) -> dict[str, Any]:
    """The `data` of a payment.* webhook event."""
    return {
        "payment_id": payment.id,
        "charge_id": payment.charge_id,
        "telegram_id": payment.telegram_id,
        "user_id": payment.user_id,
        "pack_id": payment.pack_id,
        "stars": payment.stars,
        "credits": payment.credits,
        "created_at": payment.created_at.isoformat() if payment.created_at else None,
        "refunded_at": payment.refunded_at.isoformat() if payment.refunded_at else None,
        "refund_debited": payment.refund_debited,
        "refund_shortfall": payment.refund_shortfall,
    }
