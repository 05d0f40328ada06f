"""The credit ledger: every move of a user's credits, the check that balances and ledger
agree, admin grants and /forget."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from core.errors import InsufficientCredits, ValidationFailed
from db.base import utcnow
from db.models import LedgerEntry, LedgerKind, Payment, User
from domain.audit import audit

logger = logging.getLogger(__name__)

CURRENCY = "XTR"
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
