"""Paid generations in Telegram Stars, and the one accounting of what a job costs.

Charging. Every job creation decides its charge under the user's row lock (`plan_charge`, from
`domain.jobs.check_can_start`) and applies it with the job (`apply_charge`): an admin, a style
training and an HD upscale priced 0 cost nothing; a portrait or template job takes a slot of
today's free daily quota while one is left, and beyond it (payments on) `PAYMENTS_PRICE_*`
credits with a SPEND ledger row; otherwise the user is refused (`QuotaExceeded`, or
`CreditsNeeded` with a Buy button when payments are on). An upscale priced above 0 always
costs credits. `Job.charge`/`charge_credits` keep what was charged.

Give-back. A job's charge is given back exactly once when it ends through no fault of the user:
failed with an error code that does not blame the user's input (`core.errors.caused_by_user`),
or cancelled before generation started (still queued, never claimed by a worker). A job
cancelled once it ran keeps its charge, free slot or credits: the GPU worked for it (otherwise
cancelling just before the end would paint for free, without limit). Every final
transition — the worker's finish, the claim, the sweep's failures, the cancel buttons and
commands, whatever path a future change adds — is flushed through a Session, and the
`before_flush` listener `_settle_on_flush` (registered on import; `domain/__init__.py` imports
this module) sees each job whose status changed to a final one and calls `settle`. `settle`
stamps `Job.charge_returned_at` (the free slot no longer counts toward the quota) and, for
credits, appends a GIVEBACK row; the stamp and the ledger's unique (kind, job) make it
idempotent. Credits a refund already counted as spent (its shortfall: the job was charged
before the refund) go to that refund instead of back to the user, who has their Stars back.

Ledger. Credits move only through `_move`: one atomic `UPDATE users SET credits = credits + d`
(a debit only `WHERE credits >= amount`, so a balance never goes negative) plus one
append-only `LedgerEntry` with the balance after it, in the same transaction. Nothing updates or
deletes ledger rows except /forget (`forget_billing`), which removes them and zeroes the balance
together. `ledger_mismatches` proves balance and ledger agree.

Payments. `/buy` shows the enabled packs; every invoice is a row (`issue_invoice`) whose
payload names only that row; the pre-checkout answer (`check_checkout`) and `record_payment`
credit from the row only (payer, Stars, currency, paid once), exactly once per Telegram charge
id; a payment that matches no invoice we issued is kept with the reason, credits nothing and is
audited (`payment.unmatched`); old `pk:` payloads match during the upgrade's grace period only
(`LEGACY_INVOICES`); a refund
(`refund_payment`, from an admin or a `refunded_payment` update) debits the payment's credits as
far as the user has not spent them and records the shortfall the admin is shown."""

from __future__ import annotations

import logging
import secrets
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from typing import Any

from sqlalchemy import delete, event, func, inspect, select, update
from sqlalchemy.orm import Session, UOWTransaction
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from core.errors import (
    CreditsNeeded,
    InsufficientCredits,
    NotFound,
    PaymentRefused,
    QuotaExceeded,
    UserBanned,
    ValidationFailed,
    caused_by_user,
)
from core.settings import LimitsSettings, PaymentsSettings
from db.base import lock_for_write, utcnow
from db.models import (
    FINAL_STATUSES,
    AuditEntry,
    ChargeKind,
    Invoice,
    Job,
    JobKind,
    JobStatus,
    LedgerEntry,
    LedgerKind,
    Pack,
    Payment,
    ServiceState,
    User,
)
from domain.audit import audit
from domain.webhooks import emit_event

logger = logging.getLogger(__name__)

CURRENCY = "XTR"
# Kinds the free daily quota covers (HD upscales and trainings are outside it).
QUOTA_KINDS = frozenset({JobKind.PORTRAIT, JobKind.TEMPLATE})
PAYLOAD_PREFIX = "pk"
INVOICE_PREFIX = "inv"
MAX_PACK_CREDITS = 10_000
# Telegram's bounds for a Stars price.
MIN_STARS, MAX_STARS = 1, 10_000
MAX_GRANT = 100_000


def day_start(now: datetime) -> datetime:
    """Midnight UTC of `now`'s day (quotas reset then)."""
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


# ---- the ledger ----


def _move(
    session: Session,
    user_id: int,
    kind: LedgerKind,
    delta: int,
    *,
    job_id: int | None = None,
    payment_id: int | None = None,
    actor: str | None = None,
    note: str | None = None,
) -> int | None:
    """Move a user's credits by `delta` with its ledger row; the new balance, or None when a
    debit exceeds the balance (nothing moved then)."""
    stmt = (
        update(User)
        .where(User.id == user_id)
        .values(credits=User.credits + delta)
        .returning(User.credits)
        .execution_options(synchronize_session=False)
    )
    if delta < 0:
        stmt = stmt.where(User.credits >= -delta)
    balance = session.execute(stmt).scalar_one_or_none()
    if balance is None:
        return None
    loaded = session.identity_map.get(identity_key(User, user_id))
    if loaded is not None:
        # The row changed under the ORM: show the new balance without marking it dirty.
        set_committed_value(loaded, "credits", balance)
    session.add(
        LedgerEntry(
            user_id=user_id,
            kind=kind,
            delta=delta,
            balance=int(balance),
            job_id=job_id,
            payment_id=payment_id,
            actor=actor,
            note=(note or "")[:255] or None,
        )
    )
    return int(balance)


def ledger_mismatches(session: Session) -> list[tuple[int, int, int]]:
    """(user id, balance, ledger sum) of every user whose balance disagrees with the ledger."""
    sums = (
        select(LedgerEntry.user_id, func.sum(LedgerEntry.delta).label("total"))
        .group_by(LedgerEntry.user_id)
        .subquery()
    )
    rows = session.execute(
        select(User.id, User.credits, func.coalesce(sums.c.total, 0))
        .outerjoin(sums, sums.c.user_id == User.id)
        .where(User.credits != func.coalesce(sums.c.total, 0))
    ).all()
    return [(int(a), int(b), int(c)) for a, b, c in rows]


# ---- charging a job ----


@dataclass(frozen=True)
class Charge:
    """What a job about to be created will cost."""

    kind: ChargeKind | None
    credits: int = 0


FREE = Charge(None)


def quota_used(session: Session, user_id: int, now: datetime | None = None) -> int:
    """Free-quota slots the user holds today (given-back ones do not count)."""
    since = day_start(now or utcnow())
    return int(
        session.scalar(
            select(func.count(Job.id)).where(
                Job.user_id == user_id,
                Job.created_at >= since,
                Job.charge == ChargeKind.QUOTA.value,
                Job.charge_returned_at.is_(None),
            )
        )
        or 0
    )


def daily_quota(user: User, limits: LimitsSettings) -> int:
    return user.daily_quota if user.daily_quota is not None else limits.daily_quota


def plan_charge(
    session: Session,
    user: User,
    kind: JobKind,
    limits: LimitsSettings,
    payments: PaymentsSettings,
    *,
    is_admin: bool,
) -> Charge:
    """The charge of a new job of `kind` (the caller holds the user's row lock); raises when
    the user cannot pay it."""
    if is_admin or kind is JobKind.TRAINING:
        return FREE
    price = payments.price(kind.value) if payments.enabled else 0
    if kind in QUOTA_KINDS:
        allowed = daily_quota(user, limits)
        if quota_used(session, user.id) < allowed:
            return Charge(ChargeKind.QUOTA)
        if not payments.enabled:
            raise QuotaExceeded("daily quota reached", quota=allowed)
    elif price <= 0:
        return FREE
    else:
        allowed = daily_quota(user, limits)
    if user.credits < price:
        raise CreditsNeeded(
            "free quota used and not enough credits",
            quota=allowed,
            price=price,
            credits=user.credits,
        )
    return Charge(ChargeKind.CREDITS, price)


def apply_charge(session: Session, job: Job, charge: Charge) -> None:
    """Record the planned charge on the flushed job (credits: the SPEND row)."""
    if charge.kind is None:
        return
    job.charge = charge.kind.value
    job.charge_credits = charge.credits
    if charge.kind is ChargeKind.CREDITS:
        assert job.user_id is not None
        if _move(session, job.user_id, LedgerKind.SPEND, -charge.credits, job_id=job.id) is None:
            # Only possible without the user's row lock; refuse rather than go negative.
            raise CreditsNeeded("not enough credits", price=charge.credits, credits=0, quota=0)


def gives_back(job: Job, previous: JobStatus | None) -> bool:
    """Whether a job that just reached its final status earns its charge back."""
    if job.status is JobStatus.FAILED:
        return not caused_by_user(job.error_code)
    if job.status is JobStatus.CANCELLED:
        # Only before generation started: queued and never claimed (a job the sweep took back
        # from a lost worker was claimed: GPU time went into it). A cancel once it ran keeps
        # the charge, free slot and credits alike.
        queued = previous is JobStatus.QUEUED if previous is not None else True
        return queued and job.started_at is None
    return False


def settle(session: Session, job: Job, previous: JobStatus | None = None) -> bool:
    """Give a final job's charge back if it earned it (once); whether it did now."""
    if (
        job.charge is None
        or job.charge_returned_at is not None
        or job.status not in FINAL_STATUSES
        or job.user_id is None
        or not gives_back(job, previous)
    ):
        return False
    job.charge_returned_at = utcnow()
    if job.charge == ChargeKind.CREDITS.value and job.charge_credits > 0:
        owed = job.charge_credits - _settle_refund_shortfall(session, job)
        if owed > 0:
            _move(
                session,
                job.user_id,
                LedgerKind.GIVEBACK,
                owed,
                job_id=job.id,
                note=job.error_code or job.status.value,
            )
    logger.info("job %s: %s charge given back (%s)", job.id, job.charge, job.status.value)
    return True


def _settle_refund_shortfall(session: Session, job: Job) -> int:
    """Credits of a job's give-back that go to a refund instead of the user: a payment refunded
    after the job was charged, whose refund could not debit credits already spent (its
    `refund_shortfall`), counted this job's credits among them. The user has those Stars back,
    so the credits stay with the refund (it now debited them); no ledger row, nothing moved."""
    left = job.charge_credits
    refunds = session.scalars(
        select(Payment)
        .where(
            Payment.user_id == job.user_id,
            Payment.refund_shortfall > 0,
            Payment.refunded_at >= job.created_at,
        )
        .order_by(Payment.id)
        .with_for_update()
    ).all()
    for payment in refunds:
        if left <= 0:
            break
        taken = min(left, payment.refund_shortfall or 0)
        payment.refund_shortfall = (payment.refund_shortfall or 0) - taken
        payment.refund_debited = (payment.refund_debited or 0) + taken
        left -= taken
        logger.info(
            "job %s: %d credits given back go to the refund of payment %s",
            job.id,
            taken,
            payment.charge_id,
        )
    return job.charge_credits - left


def _previous_status(job: Job) -> JobStatus | None:
    history = inspect(job).attrs.status.history
    return history.deleted[0] if history.deleted else None


def _settle_on_flush(session: Session, _context: UOWTransaction, _instances: Any) -> None:
    """The one place every job's final transition passes: give its charge back if due."""
    for obj in list(session.dirty):
        if isinstance(obj, Job) and obj.charge is not None and obj.charge_returned_at is None:
            history = inspect(obj).attrs.status.history
            if history.added and obj.status in FINAL_STATUSES:
                settle(session, obj, _previous_status(obj))


event.listen(Session, "before_flush", _settle_on_flush)


# ---- what the user sees ----


@dataclass(frozen=True)
class Balance:
    """/balance: credits, today's free quota, and the prices."""

    credits: int
    quota_left: int
    quota: int
    price_portrait: int
    price_template: int
    price_upscale: int


def balance(
    session: Session, user_id: int, limits: LimitsSettings, payments: PaymentsSettings
) -> Balance:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    allowed = daily_quota(user, limits)
    return Balance(
        credits=user.credits,
        quota_left=max(0, allowed - quota_used(session, user_id)),
        quota=allowed,
        price_portrait=payments.price_portrait,
        price_template=payments.price_template,
        price_upscale=payments.price_upscale,
    )


# ---- packs (admins) ----


def list_packs(session: Session, *, enabled_only: bool = False) -> Sequence[Pack]:
    """Packs in shop order (position, then id)."""
    stmt = select(Pack).order_by(Pack.position, Pack.id)
    if enabled_only:
        stmt = stmt.where(Pack.enabled.is_(True))
    return session.scalars(stmt).all()


def get_pack(session: Session, pack_id: int) -> Pack:
    pack = session.get(Pack, pack_id)
    if pack is None:
        raise NotFound(f"pack {pack_id} not found", pack_id=pack_id)
    return pack


def _check_pack(title: str, credits: int, stars: int) -> None:
    if not title.strip() or len(title) > 32:
        raise ValidationFailed("a pack title is 1 to 32 characters")
    if not 1 <= credits <= MAX_PACK_CREDITS:
        raise ValidationFailed(f"credits must be between 1 and {MAX_PACK_CREDITS}")
    if not MIN_STARS <= stars <= MAX_STARS:
        raise ValidationFailed(f"the price must be between {MIN_STARS} and {MAX_STARS} Stars")


def create_pack(
    session: Session,
    *,
    title: str,
    credits: int,
    stars: int,
    actor: str,
    enabled: bool = True,
    position: int | None = None,
) -> Pack:
    """A new pack (last in the shop unless a position is given)."""
    _check_pack(title, credits, stars)
    if position is None:
        position = int(session.scalar(select(func.coalesce(func.max(Pack.position), 0))) or 0) + 1
    pack = Pack(
        title=title.strip(), credits=credits, stars=stars, enabled=enabled, position=position
    )
    session.add(pack)
    session.flush()
    audit(session, actor, "pack.create", f"pack:{pack.id}", credits=credits, stars=stars)
    return pack


def update_pack(session: Session, pack_id: int, changes: dict[str, Any], actor: str) -> Pack:
    """Change a pack's title, credits, price, enabled flag or position.

    Invoices already sent keep their terms; a changed price or credit count makes the
    pre-checkout refuse them, so nobody pays an old price for a new pack."""
    pack = session.get(Pack, pack_id, with_for_update=True, populate_existing=True)
    if pack is None:
        raise NotFound(f"pack {pack_id} not found", pack_id=pack_id)
    allowed = {"title", "credits", "stars", "enabled", "position"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValidationFailed("unknown pack fields: " + ", ".join(sorted(unknown)))
    title = str(changes.get("title", pack.title))
    credits = int(changes.get("credits", pack.credits))
    stars = int(changes.get("stars", pack.stars))
    _check_pack(title, credits, stars)
    previous = {k: getattr(pack, k) for k in changes}
    for key, value in changes.items():
        setattr(pack, key, value.strip() if key == "title" else value)
    audit(session, actor, "pack.update", f"pack:{pack_id}", changes=changes, previous=previous)
    return pack


def delete_pack(session: Session, pack_id: int, actor: str) -> None:
    """Delete a pack (its payments keep their own title, Stars and credits)."""
    pack = get_pack(session, pack_id)
    session.delete(pack)
    session.flush()
    audit(session, actor, "pack.delete", f"pack:{pack_id}", title=pack.title)


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


# ---- admin grants and views ----


def grant_credits(
    session: Session, who: int | str, delta: int, actor: str, note: str | None = None
) -> User:
    """An admin's correction of a user's credits (+ or -; never below zero)."""
    from domain.users import by_telegram_id

    if delta == 0 or abs(delta) > MAX_GRANT:
        raise ValidationFailed(f"a grant is a non-zero number of credits up to {MAX_GRANT}")
    user = by_telegram_id(session, who)
    session.get(User, user.id, with_for_update=True, populate_existing=True)
    if _move(session, user.id, LedgerKind.GRANT, delta, actor=actor, note=note) is None:
        raise InsufficientCredits(
            f"the user has {user.credits} credits; cannot take {-delta}",
            credits=user.credits,
        )
    audit(session, actor, "user.credits", f"user:{user.telegram_id}", delta=delta, note=note)
    return user


def ledger_page(
    session: Session, who: int | str, *, limit: int, offset: int
) -> tuple[User, Sequence[LedgerEntry], int]:
    """A user's ledger, newest first, and how many rows it has."""
    from domain.users import by_telegram_id

    user = by_telegram_id(session, who)
    stmt = select(LedgerEntry).where(LedgerEntry.user_id == user.id)
    total = int(session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
    rows = session.scalars(stmt.order_by(LedgerEntry.id.desc()).limit(limit).offset(offset)).all()
    return user, rows, total


def payments_page(
    session: Session, *, telegram_id: int | None, limit: int, offset: int
) -> tuple[Sequence[Payment], int]:
    """Payments newest first (of one payer, if given)."""
    stmt = select(Payment)
    if telegram_id is not None:
        stmt = stmt.where(Payment.telegram_id == telegram_id)
    total = int(session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
    rows = session.scalars(stmt.order_by(Payment.id.desc()).limit(limit).offset(offset)).all()
    return rows, total


def payments_of(
    session: Session, who: int | str, limit: int = 10
) -> tuple[User, Sequence[Payment]]:
    """A user's latest payments (by Telegram id or `@username`), newest first."""
    from domain.users import by_telegram_id

    user = by_telegram_id(session, who)
    rows, _ = payments_page(session, telegram_id=user.telegram_id, limit=limit, offset=0)
    return user, rows


@dataclass(frozen=True)
class RevenueDay:
    """One UTC day of sales."""

    day: date
    payments: int
    stars: int
    credits: int
    refunds: int
    refunded_stars: int

    @property
    def net_stars(self) -> int:
        return self.stars - self.refunded_stars


def revenue_by_day(session: Session, days: int, now: datetime | None = None) -> list[RevenueDay]:
    """Sales and refunds per UTC day for the last `days` days (today included), oldest first."""
    today = (now or utcnow()).date()
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, dt_time.min, tzinfo=UTC)
    sold: dict[date, list[int]] = defaultdict(lambda: [0, 0, 0])
    for created, stars, credits in session.execute(
        select(Payment.created_at, Payment.stars, Payment.credits).where(
            Payment.created_at >= since
        )
    ):
        row = sold[created.date()]
        row[0] += 1
        row[1] += int(stars)
        row[2] += int(credits)
    refunded: dict[date, list[int]] = defaultdict(lambda: [0, 0])
    for refunded_at, stars in session.execute(
        select(Payment.refunded_at, Payment.stars).where(Payment.refunded_at >= since)
    ):
        if refunded_at is None:
            continue
        row = refunded[refunded_at.date()]
        row[0] += 1
        row[1] += int(stars)
    out = []
    for n in range(days):
        day = first + timedelta(days=n)
        p, s, c = sold.get(day, [0, 0, 0])
        r, rs = refunded.get(day, [0, 0])
        out.append(RevenueDay(day, p, s, c, r, rs))
    return out


# ---- /forget ----


def forget_billing(session: Session, user_id: int, *, keep_payment_records: bool) -> int:
    """/forget: the user's ledger goes and the balance with it (unspent credits are forfeited);
    the payments go too unless the operator must keep them (PAYMENTS_FORGET_KEEPS_PAYMENT_
    RECORDS). Returns how many payments were deleted."""
    session.execute(delete(LedgerEntry).where(LedgerEntry.user_id == user_id))
    session.execute(
        update(User)
        .where(User.id == user_id)
        .values(credits=0, forgotten_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    loaded = session.identity_map.get(identity_key(User, user_id))
    if loaded is not None:
        set_committed_value(loaded, "credits", 0)
        set_committed_value(loaded, "forgotten_at", utcnow())
    if keep_payment_records:
        return 0
    result = session.execute(delete(Payment).where(Payment.user_id == user_id))
    return int(getattr(result, "rowcount", 0) or 0)
