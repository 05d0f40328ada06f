"""Admin broadcasts: one message to every unbanned user, resumable, with progress.

A broadcast is `queued` when created (its `broadcast.send` task is outboxed), `sending` while
one sender owns it, then `done` or `cancelled`. The sender walks users in id order and saves
`sent`, `failed` and `cursor` after every message (`save_progress`), so a restarted task resumes
after the last user reached. Only one sender works on a broadcast at a time: it claims the row
(queued -> sending), and a second copy finding it `sending` with fresh progress leaves it alone;
a sender silent for `STALE_SENDER_SECONDS` may be taken over. The sweep re-publishes queued rows
whose task was lost (`stalled_broadcast_ids`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from core.errors import IllegalTransition, ValidationFailed
from db.base import utcnow
from db.models import Broadcast
from db.repositories.broadcasts import BroadcastRepository
from db.repositories.users import UserRepository
from domain import outbox
from domain.audit import audit
from domain.webhooks import emit_event

logger = logging.getLogger(__name__)

# A sender that has not saved progress for this long is presumed dead and may be taken over.
STALE_SENDER_SECONDS = 600.0
MAX_TEXT_LENGTH = 4096
ACTIVE = ("queued", "sending")


def create_broadcast(session: Session, text: str, actor: str) -> Broadcast:
    """Record a queued broadcast to all unbanned users; its task is published after the commit."""
    text = text.strip()
    if not text:
        raise ValidationFailed("broadcast text is empty")
    if len(text) > MAX_TEXT_LENGTH:
        raise ValidationFailed(f"broadcast text is longer than {MAX_TEXT_LENGTH} characters")
    repo = BroadcastRepository(session)
    broadcast = repo.add(
        Broadcast(text=text, status="queued", created_by=actor, total=repo.count_recipients())
    )
    audit(session, actor, "broadcast.create", f"broadcast:{broadcast.id}", total=broadcast.total)
    outbox.pending(session).broadcasts.append(broadcast.id)
    return broadcast


def cancel_broadcast(session: Session, broadcast_id: int, actor: str) -> Broadcast:
    """Stop a queued or sending broadcast before its next message."""
    broadcast = BroadcastRepository(session).get_for_update(broadcast_id)
    if broadcast.status not in ACTIVE:
        raise IllegalTransition(
            f"broadcast {broadcast_id} is {broadcast.status}", current=broadcast.status
        )
    broadcast.status = "cancelled"
    broadcast.finished_at = utcnow()
    audit(session, actor, "broadcast.cancel", f"broadcast:{broadcast_id}")
    return broadcast


def progress(broadcast: Broadcast) -> dict[str, Any]:
    """The API view of a broadcast and how far it got."""
    done = broadcast.sent + broadcast.failed
    return {
        "id": broadcast.id,
        "status": broadcast.status,
        "text": broadcast.text,
        "created_by": broadcast.created_by,
        "total": broadcast.total,
        "sent": broadcast.sent,
        "failed": broadcast.failed,
        "cursor": broadcast.cursor,
        "progress": round(done / broadcast.total, 4) if broadcast.total else 1.0,
        "created_at": broadcast.created_at.isoformat(),
        "finished_at": broadcast.finished_at.isoformat() if broadcast.finished_at else None,
    }


def get_progress(session: Session, broadcast_id: int) -> dict[str, Any]:
    """One broadcast's progress (NotFound if there is none)."""
    return progress(BroadcastRepository(session).get(broadcast_id))


def broadcasts_page(
    session: Session, *, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """Broadcasts newest first, as progress views, and how many there are."""
    repo = BroadcastRepository(session)
    rows, total = repo.page(repo.query(), limit=limit, offset=offset)
    return [progress(b) for b in rows], total


def stalled_broadcast_ids(session: Session, older_than: timedelta) -> list[int]:
    """Queued broadcasts untouched for a while (publish lost, or the re-publish chain broken)."""
    return [b.id for b in BroadcastRepository(session).stalled(utcnow() - older_than)]


# ---- the sender's side ----


@dataclass
class SendState:
    """What a sender needs after claiming: the text, its verdict and where to go on."""

    text: str
    status: str
    sent: int
    failed: int
    cursor: int


def claim(session: Session, broadcast_id: int) -> SendState:
    """Claim the broadcast: queued -> sending, or take over a sender that went silent.

    The returned status is `sending` when this caller owns it now, `busy` when another sender
    does, else the broadcast's final status."""
    broadcast = BroadcastRepository(session).get_for_update(broadcast_id)
    status = broadcast.status
    if status == "queued":
        broadcast.status = status = "sending"
    elif status == "sending":
        # Every sent message touches updated_at; a fresh one means another task is sending.
        if broadcast.updated_at > utcnow() - timedelta(seconds=STALE_SENDER_SECONDS):
            status = "busy"
        else:
            logger.warning("broadcast %s: taking over from a silent sender", broadcast_id)
            broadcast.updated_at = utcnow()
    return SendState(broadcast.text, status, broadcast.sent, broadcast.failed, broadcast.cursor)


def recipients(session: Session, after_user_id: int, limit: int) -> list[tuple[int, int]]:
    """(user id, telegram id) of the next unbanned users after the cursor, in id order."""
    return list(UserRepository(session).all_active_ids(after_user_id, limit))


def hand_back(session: Session, broadcast_id: int) -> None:
    """Return the broadcast to the queue (the next task claims it again)."""
    broadcast = BroadcastRepository(session).get_for_update(broadcast_id)
    if broadcast.status == "sending":
        broadcast.status = "queued"


def save_progress(session: Session, broadcast_id: int, delivered: bool, user_id: int) -> str:
    """Count one recipient and move the cursor; returns the status (stop unless `sending`)."""
    broadcast = BroadcastRepository(session).get_for_update(broadcast_id)
    if broadcast.status != "sending":
        return broadcast.status
    if delivered:
        broadcast.sent += 1
    else:
        broadcast.failed += 1
    broadcast.cursor = user_id
    return broadcast.status


def finish(session: Session, broadcast_id: int) -> Sequence[int]:
    """Mark a sending broadcast done and emit `broadcast.finished`; returns the delivery ids."""
    broadcast = BroadcastRepository(session).get_for_update(broadcast_id)
    if broadcast.status != "sending":
        return []
    broadcast.status = "done"
    broadcast.finished_at = utcnow()
    # Users who joined meanwhile were reached too; the total reports who was.
    broadcast.total = max(broadcast.total, broadcast.sent + broadcast.failed)
    return emit_event(
        session,
        "broadcast.finished",
        {"broadcast_id": broadcast.id, "sent": broadcast.sent, "failed": broadcast.failed},
    )
