"""The inbox of Telegram updates (`db.models.InboundUpdate`): at-least-once, handled once.

An update is stored before Telegram (or the relay queue) is told it arrived, and marked done
once its handler finished; a bot that starts hands the unfinished ones to its handlers first.
A copy of an update already stored is never stored or handled again. A handler that ran but
died before `finish` runs again on replay: the handlers that create jobs find the job their
update created (`jobs.update_id`), and payments are keyed by Telegram's charge id."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import InboundUpdate

# Done updates are kept this long (to drop copies Telegram or the relay sends late), then purged.
KEEP_DONE = timedelta(days=1)


def store(session: Session, update_id: int, payload: dict[str, Any]) -> bool:
    """Keep one received update; False when it was stored before (a copy: not handled again)."""
    if session.get(InboundUpdate, update_id) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(InboundUpdate(update_id=update_id, payload=payload))
    except IntegrityError:
        # Another process stored the same update between the read and the insert.
        return False
    return True


def store_batch(session: Session, items: Sequence[tuple[int, dict[str, Any]]]) -> list[int]:
    """Keep a batch of received updates in one transaction (what one getUpdates returned); the
    ids of those not stored before, in order (the copies are not handled again)."""
    ids = [update_id for update_id, _ in items]
    if not ids:
        return []
    seen = set(
        session.scalars(select(InboundUpdate.update_id).where(InboundUpdate.update_id.in_(ids)))
    )
    stored: list[int] = []
    for update_id, payload in items:
        if update_id in seen:
            continue
        seen.add(update_id)
        try:
            with session.begin_nested():
                session.add(InboundUpdate(update_id=update_id, payload=payload))
        except IntegrityError:
            # Another process stored the same update between the read and the insert.
            continue
        stored.append(update_id)
    return stored


def unfinished(session: Session, limit: int = 10_000) -> list[dict[str, Any]]:
    """The stored updates whose handler never finished, oldest first (a bot replays them)."""
    rows = session.scalars(
        select(InboundUpdate.payload)
        .where(InboundUpdate.done_at.is_(None))
        .order_by(InboundUpdate.update_id)
        .limit(limit)
    )
    return [dict(p) for p in rows]


def is_done(session: Session, update_id: int) -> bool:
    """Whether a handler already finished this update."""
    done = session.scalar(
        select(InboundUpdate.done_at).where(InboundUpdate.update_id == update_id)
    )
    return done is not None


def finish(session: Session, update_id: int) -> None:
    """Its handler finished: never hand it out again (a no-op for updates never stored)."""
    session.execute(
        update(InboundUpdate)
        .where(InboundUpdate.update_id == update_id, InboundUpdate.done_at.is_(None))
        .values(done_at=utcnow())
    )


def purge(session: Session, now: datetime | None = None, keep: timedelta = KEEP_DONE) -> int:
    """Delete updates done longer than `keep` ago; how many went."""
    cutoff = (now or utcnow()) - keep
    result = session.execute(
        delete(InboundUpdate).where(
            InboundUpdate.done_at.is_not(None), InboundUpdate.done_at < cutoff
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)
