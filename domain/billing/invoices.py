"""Buying: the invoice rows, their payloads (with the grace period for old `pk:` payloads)
and the pre-checkout answer."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import NotFound, PaymentRefused, UserBanned
from core.settings import PaymentsSettings
from db.base import utcnow
from db.models import Invoice, Pack, ServiceState, User
from domain.billing.ledger import CURRENCY

logger = logging.getLogger(__name__)

PAYLOAD_PREFIX = "pk"
INVOICE_PREFIX = "inv"

# ---- buying ----

# The service_state row of the grace period for invoices issued before invoices were rows.
LEGACY_INVOICES = "payments.legacy_invoices"
# Why a payment credited nothing: its payload names no invoice we issued, another user's
# invoice, another price or currency, or an invoice already paid.
UNMATCHED_REASONS = ("no_invoice", "payer", "amount", "currency", "paid")


def issue_invoice(
    session: Session,
    user_id: int,
    pack_id: int,
    payments: PaymentsSettings,
    now: datetime | None = None,
) -> Invoice:
    """Issue an invoice for a pack the user chose (PaymentRefused when it cannot be sold now):
    the row a payment of it is credited from. Its `payload` is what `sendInvoice` or
    `createInvoiceLink` must carry (`inv:` and the row's random public id, nothing else)."""
    if not payments.enabled:
        raise PaymentRefused("payments are off", reason="disabled")
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    if user.is_banned:
        raise UserBanned("banned")
    pack = session.get(Pack, pack_id)
    if pack is None or not pack.enabled:
        raise PaymentRefused("the pack is no longer sold", reason="pack_gone")
    issued = now or utcnow()
    invoice = Invoice(
        payload=f"{INVOICE_PREFIX}:{secrets.token_urlsafe(16)}",
        user_id=user.id,
        telegram_id=user.telegram_id,
        pack_id=pack.id,
        title=pack.title,
        credits=pack.credits,
        stars=pack.stars,
        currency=CURRENCY,
        issued_at=issued,
        expires_at=issued + timedelta(seconds=payments.invoice_ttl_seconds),
    )
    session.add(invoice)
    session.flush()
    return invoice


def invoice_payload(pack: Pack, user_id: int, issued: int) -> str:
    """The payload invoices carried before they were rows:
    `pk:<pack>:<credits>:<stars>:<user>:<unix time in ms>` (read during the grace period)."""
    return f"{PAYLOAD_PREFIX}:{pack.id}:{pack.credits}:{pack.stars}:{user_id}:{issued}"


@dataclass(frozen=True)
class Payload:
    pack_id: int
    credits: int
    stars: int
    user_id: int
    issued: int


def parse_payload(payload: str) -> Payload | None:
    """An old-format invoice payload (`invoice_payload`); None for anything else."""
    parts = payload.split(":")
    if len(parts) != 6 or parts[0] != PAYLOAD_PREFIX or not all(p.isdigit() for p in parts[1:]):
        return None
    pack_id, credits, stars, user_id, issued = (int(p) for p in parts[1:])
    return Payload(pack_id, credits, stars, user_id, issued)


def find_invoice(session: Session, payload: str, now: datetime | None = None) -> Invoice | None:
    """The invoice a payload names (locked: paying it is serialised), or None when it names
    none we issued."""
    invoice = session.scalar(
        select(Invoice)
        .where(Invoice.payload == payload)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if invoice is None and payload.startswith(f"{PAYLOAD_PREFIX}:"):
        invoice = _legacy_invoice(session, payload, now or utcnow())
    return invoice


def _legacy_invoice(session: Session, payload: str, now: datetime) -> Invoice | None:
    """The row of an old `pk:` invoice, made now, during the grace period the upgrade set
    (`LEGACY_INVOICES`): issued before the upgrade, paid before the grace ends, for the same
    user, and its pack still selling the same credits for the same Stars. None otherwise."""
    parsed = parse_payload(payload)
    state = session.get(ServiceState, LEGACY_INVOICES)
    if parsed is None or state is None:
        return None
    now_ms = int(now.timestamp() * 1000)
    if parsed.issued >= int(state.value.get("issued_before_ms", 0)) or now_ms > int(
        state.value.get("paid_until_ms", 0)
    ):
        return None
    user = session.get(User, parsed.user_id)
    pack = session.get(Pack, parsed.pack_id)
    if (
        user is None
        or pack is None
        or (pack.credits, pack.stars) != (parsed.credits, parsed.stars)
    ):
        return None
    issued = datetime.fromtimestamp(parsed.issued / 1000, UTC)
    invoice = Invoice(
        payload=payload,
        user_id=user.id,
        telegram_id=user.telegram_id,
        pack_id=pack.id,
        title=pack.title,
        credits=parsed.credits,
        stars=parsed.stars,
        currency=CURRENCY,
        issued_at=issued,
        expires_at=datetime.fromtimestamp(int(state.value["paid_until_ms"]) / 1000, UTC),
    )
    session.add(invoice)
    session.flush()
    logger.info("invoice %s from before invoices were rows: matched to pack %s", payload, pack.id)
    return invoice


def _payer(session: Session, telegram_id: int) -> User | None:
    return session.scalar(select(User).where(User.telegram_id == telegram_id))


def check_checkout(
    session: Session,
    telegram_id: int,
    payload: str,
    currency: str,
    total_amount: int,
    payments: PaymentsSettings,
) -> str | None:
    """The pre-checkout verdict: None to accept, else the refusal reason (`pay.refused.<r>`).

    Only the invoice row counts: its payer, price and currency; then whether it can still be
    paid (not paid, not expired) and its pack still sold on the same terms."""
    if not payments.enabled:
        return "disabled"
    now = utcnow()
    invoice = find_invoice(session, payload, now)
    user = _payer(session, telegram_id)
    if (
        invoice is None
        or user is None
        or invoice.user_id != user.id
        or currency != invoice.currency
        or total_amount != invoice.stars
    ):
        return "invalid"
    if user.is_banned:
        return "banned"
    if user.forgotten_at is not None and user.forgotten_at >= invoice.issued_at:
        return "forgotten"
    if invoice.paid_at is not None:
        return "paid"
    pack = session.get(Pack, invoice.pack_id) if invoice.pack_id is not None else None
    if pack is None or not pack.enabled:
        return "pack_gone"
    if (pack.stars, pack.credits) != (invoice.stars, invoice.credits):
        return "price_changed"
    if now > invoice.expires_at:
        return "expired"
    return None
