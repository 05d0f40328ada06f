"""Admin broadcasts: one message to every unbanned user, throttled, resumable, with progress.

The sender walks users in id order and commits `sent`, `failed` and `cursor` after every
message, so a restarted or redelivered task resumes after the last user it reached. Sends are
spaced to at most `RATE_PER_SECOND` (under Telegram's ~30/s bulk limit), a `RetryAfter` pauses
for as long as Telegram asks, and a task runs for at most `RUN_BUDGET_SECONDS` before
re-publishing itself so it stays under the io queue's time limit. Only one task sends a given
broadcast at a time: it claims the row (queued -> sending), and a second copy finding it
`sending` with fresh progress leaves it alone. The periodic sweep calls
`resend_stalled_broadcasts` for queued rows whose task was never published or got lost."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from celery import Celery, shared_task
from sqlalchemy.orm import Session
from telegram.error import BadRequest, ChatMigrated, Forbidden, NetworkError, RetryAfter

from db.base import utcnow
from db.models import Broadcast
from db.repositories.broadcasts import BroadcastRepository
from db.repositories.users import UserRepository
from db.session import Database
from service.admin import audit
from service.errors import IllegalTransition, ValidationFailed
from tasks.webhooks import emit_event, enqueue_deliveries, take_emitted

logger = logging.getLogger(__name__)

RATE_PER_SECOND = 25.0
BATCH_SIZE = 200
RUN_BUDGET_SECONDS = 90.0
# A sender that has not saved progress for this long is presumed dead and may be taken over.
STALE_SENDER_SECONDS = 600.0
# Tries per recipient on network errors and RetryAfter before counting it as failed.
SEND_TRIES = 5
MAX_TEXT_LENGTH = 4096
ACTIVE = ("queued", "sending")


class MessageSender(Protocol):
    """What the sender needs from a Bot (python-telegram-bot's `Bot` fits)."""

    async def send_message(self, chat_id: int, text: str) -> Any: ...


def create_broadcast(session: Session, text: str, actor: str) -> Broadcast:
    """Record a queued broadcast to all unbanned users (publish `broadcast.send` after commit)."""
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


def resend_stalled_broadcasts(celery: Celery, db: Database, older_than: timedelta) -> int:
    """Re-publish queued broadcasts untouched for a while (publish lost, or chain broken)."""
    ids = db.call(lambda s: [b.id for b in BroadcastRepository(s).stalled(utcnow() - older_than)])
    for broadcast_id in ids:
        celery.send_task("broadcast.send", args=[broadcast_id], queue="io")
    return len(ids)


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


@dataclass
class _State:
    text: str
    status: str
    sent: int
    failed: int
    cursor: int


def _recipients(session: Session, after_id: int, limit: int) -> list[tuple[int, int]]:
    return list(UserRepository(session).all_active_ids(after_id, limit))


def _start(session: Session, broadcast_id: int) -> _State:
    """Claim the broadcast: queued -> sending, or take over a sender that went silent."""
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
    return _State(broadcast.text, status, broadcast.sent, broadcast.failed, broadcast.cursor)


def _release(session: Session, broadcast_id: int) -> None:
    """Hand the broadcast back to the queue (the next task claims it again)."""
    broadcast = BroadcastRepository(session).get_for_update(broadcast_id)
    if broadcast.status == "sending":
        broadcast.status = "queued"


def _save(session: Session, broadcast_id: int, delivered: bool, user_id: int) -> str:
    broadcast = BroadcastRepository(session).get_for_update(broadcast_id)
    if broadcast.status != "sending":
        return broadcast.status
    if delivered:
        broadcast.sent += 1
    else:
        broadcast.failed += 1
    broadcast.cursor = user_id
    return broadcast.status


def _finish(session: Session, broadcast_id: int) -> list[int]:
    broadcast = BroadcastRepository(session).get_for_update(broadcast_id)
    if broadcast.status != "sending":
        return []
    broadcast.status = "done"
    broadcast.finished_at = utcnow()
    # Users who joined meanwhile were reached too; the total reports who was.
    broadcast.total = max(broadcast.total, broadcast.sent + broadcast.failed)
    emit_event(
        session,
        "broadcast.finished",
        {"broadcast_id": broadcast.id, "sent": broadcast.sent, "failed": broadcast.failed},
    )
    return take_emitted(session)


async def _send_one(
    bot: MessageSender, chat_id: int, text: str, sleep: Callable[[float], Awaitable[None]]
) -> bool:
    """Send to one chat; False when the chat can't be reached (blocked, deleted, gone)."""
    for attempt in range(1, SEND_TRIES + 1):
        try:
            await bot.send_message(chat_id=chat_id, text=text)
            return True
        except RetryAfter as exc:
            wait = exc.retry_after
            seconds = wait.total_seconds() if isinstance(wait, timedelta) else float(wait)
            logger.warning("broadcast: Telegram asks to wait %.1f s", seconds)
            await sleep(seconds)
        except (Forbidden, ChatMigrated, BadRequest) as exc:
            logger.info("broadcast: chat %s unreachable: %s", chat_id, exc)
            return False
        except NetworkError as exc:
            logger.warning("broadcast: network error to %s (try %d): %s", chat_id, attempt, exc)
            await sleep(float(attempt))
    return False


async def run_broadcast(
    db: Database,
    bot: MessageSender,
    broadcast_id: int,
    *,
    celery: Celery | None = None,
    rate: float = RATE_PER_SECOND,
    budget_seconds: float = RUN_BUDGET_SECONDS,
    batch_size: int = BATCH_SIZE,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> str:
    """Send from the saved cursor on; return the final status, "more" when the budget ran out,
    or "busy" when another task is sending it."""
    state = db.call(_start, broadcast_id)
    if state.status != "sending":
        return state.status
    started = clock()
    interval = 1.0 / rate
    next_at = clock()
    cursor = state.cursor
    while True:
        batch = db.call(_recipients, cursor, batch_size)
        if not batch:
            break
        for user_id, telegram_id in batch:
            if clock() - started >= budget_seconds:
                logger.info("broadcast %s: budget spent at cursor %s", broadcast_id, cursor)
                db.call(_release, broadcast_id)
                return "more"
            delay = next_at - clock()
            if delay > 0:
                await sleep(delay)
            next_at = max(next_at, clock()) + interval
            delivered = await _send_one(bot, telegram_id, state.text, sleep)
            status = db.call(_save, broadcast_id, delivered, user_id)
            cursor = user_id
            if status != "sending":
                logger.info("broadcast %s stopped: %s", broadcast_id, status)
                return status
    delivery_ids = db.call(_finish, broadcast_id)
    if celery is not None:
        enqueue_deliveries(celery, delivery_ids)
    logger.info("broadcast %s done", broadcast_id)
    return "done"


@shared_task(name="broadcast.send", queue="io", acks_late=True)
def send_broadcast(broadcast_id: int) -> str:
    """Send a broadcast for up to the run budget, then re-publish itself to continue."""
    from telegram import Bot

    from tasks.context import get_context

    ctx = get_context()
    settings = ctx.config.telegram
    if settings.token is None:
        raise ValidationFailed("TELEGRAM_TOKEN is not set; cannot broadcast")
    bot = Bot(
        settings.token.get_secret_value(),
        base_url=settings.api_base_url,
        base_file_url=settings.file_base_url,
    )

    async def _run() -> str:
        async with bot:
            return await run_broadcast(ctx.db, bot, broadcast_id, celery=ctx.celery)

    status = asyncio.run(_run())
    if status == "more":
        ctx.celery.send_task("broadcast.send", args=[broadcast_id], queue="io")
    return status
