"""What a job costs: the charge decided at creation, its give-back when the job ends through
no fault of the user (the `before_flush` listener), and the balance the user sees."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import event, func, inspect, select
from sqlalchemy.orm import Session, UOWTransaction

from core.errors import CreditsNeeded, NotFound, QuotaExceeded, caused_by_user
from core.settings import LimitsSettings, PaymentsSettings
from db.base import utcnow
from db.models import (
    FINAL_STATUSES,
    ChargeKind,
    Job,
    JobKind,
    JobStatus,
    LedgerKind,
    Payment,
    User,
)
from domain.billing.ledger import _move, day_start

logger = logging.getLogger(__name__)

# Kinds the free daily quota covers (HD upscales and trainings are outside it).
QUOTA_KINDS = frozenset({JobKind.PORTRAIT, JobKind.TEMPLATE})

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


def settle_ended(session: Session, job: Job) -> bool:
    """Give back the charge of a loaded job whose status just became final (since the last
    flush), if due; whether it did now. Called where a job ends (`domain.lifecycle`,
    `domain.jobs`); `_settle_on_flush` calls it for any path that does not."""
    state = inspect(job)
    if (
        job.charge is None
        or job.charge_returned_at is not None
        or not state.persistent
        or job.status not in FINAL_STATUSES
        or not state.attrs.status.history.added
    ):
        return False
    return settle(session, job, _previous_status(job))


def _settle_on_flush(session: Session, _context: UOWTransaction, _instances: Any) -> None:
    """The one place every job's final transition passes: give its charge back if due (a path
    that already called `settle_ended` finds it settled)."""
    for obj in list(session.dirty):
        if isinstance(obj, Job):
            settle_ended(session, obj)


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
