"""Admin views of the ledger, the payments and the revenue."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import LedgerEntry, Payment, User

logger = logging.getLogger(__name__)


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
