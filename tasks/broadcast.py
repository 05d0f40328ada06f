"""io task `broadcast.send`: send a broadcast's text to every recipient, throttled, resumable.

The state (claim, cursor, counts, finish) is `domain.broadcasts`; this module paces the sends.
Sends are spaced to at most the bulk limit (`TELEGRAM_BULK_MESSAGES_PER_SECOND`, Telegram's
~30/s; the Bot's limiter holds them to it too, with the process's other bulk messages), a
`RetryAfter` pauses for as long as Telegram asks, and a task runs for at most
`RUN_BUDGET_SECONDS` before re-publishing itself so it stays under the io queue's time limit.
A message is sent again only when Telegram certainly did not get it (`telegram_ui.client`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Protocol

from celery import Celery, shared_task
from telegram.error import BadRequest, ChatMigrated, Forbidden, NetworkError, RetryAfter

from core.errors import ValidationFailed
from db.session import Database
from domain import broadcasts
from domain.outbox import Outbox, Publisher
from tasks.dispatch import enqueue_broadcast
from telegram_ui.client import bulk_sends, may_have_reached_telegram, retry_after_seconds

logger = logging.getLogger(__name__)

RATE_PER_SECOND = 25.0
BATCH_SIZE = 200
RUN_BUDGET_SECONDS = 90.0
# Tries per recipient on RetryAfter and unsent requests before counting it as failed.
SEND_TRIES = 5


class MessageSender(Protocol):
    """What the sender needs from a Bot (python-telegram-bot's `Bot` fits)."""

    async def send_message(self, chat_id: int, text: str) -> Any: ...


def resend_stalled_broadcasts(celery: Celery, db: Database, older_than: timedelta) -> int:
    """Re-publish queued broadcasts untouched for a while (publish lost, or chain broken)."""
    ids = db.call(broadcasts.stalled_broadcast_ids, older_than)
    for broadcast_id in ids:
        enqueue_broadcast(celery, broadcast_id)
    return len(ids)


async def _send_one(
    bot: MessageSender, chat_id: int, text: str, sleep: Callable[[float], Awaitable[None]]
) -> bool:
    """Send to one chat; False when the chat can't be reached (blocked, deleted, gone) or the
    message may have arrived without an answer (never sent twice)."""
    for attempt in range(1, SEND_TRIES + 1):
        try:
            with bulk_sends():
                await bot.send_message(chat_id=chat_id, text=text)
            return True
        except RetryAfter as exc:
            seconds = retry_after_seconds(exc)
            logger.warning("broadcast: Telegram asks to wait %.1f s", seconds)
            await sleep(seconds)
        except (Forbidden, ChatMigrated, BadRequest) as exc:
            logger.info("broadcast: chat %s unreachable: %s", chat_id, exc)
            return False
        except NetworkError as exc:
            if may_have_reached_telegram(exc):
                logger.warning(
                    "broadcast: chat %s may have the message (%s); not resent", chat_id, exc
                )
                return False
            logger.warning("broadcast: network error to %s (try %d): %s", chat_id, attempt, exc)
            await sleep(float(attempt))
    return False


async def run_broadcast(
    db: Database,
    bot: MessageSender,
    broadcast_id: int,
    *,
    publisher: Publisher | None = None,
    rate: float = RATE_PER_SECOND,
    budget_seconds: float = RUN_BUDGET_SECONDS,
    batch_size: int = BATCH_SIZE,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> str:
    """Send from the saved cursor on; return the final status, "more" when the budget ran out,
    or "busy" when another task is sending it."""
    state = db.call(broadcasts.claim, broadcast_id)
    if state.status != "sending":
        return state.status
    started = clock()
    interval = 1.0 / rate
    next_at = clock()
    cursor = state.cursor
    while True:
        batch = db.call(broadcasts.recipients, cursor, batch_size)
        if not batch:
            break
        for user_id, telegram_id in batch:
            if clock() - started >= budget_seconds:
                logger.info("broadcast %s: budget spent at cursor %s", broadcast_id, cursor)
                db.call(broadcasts.hand_back, broadcast_id)
                return "more"
            delay = next_at - clock()
            if delay > 0:
                await sleep(delay)
            next_at = max(next_at, clock()) + interval
            delivered = await _send_one(bot, telegram_id, state.text, sleep)
            status = db.call(broadcasts.save_progress, broadcast_id, delivered, user_id)
            cursor = user_id
            if status != "sending":
                logger.info("broadcast %s stopped: %s", broadcast_id, status)
                return status
    delivery_ids = db.call(broadcasts.finish, broadcast_id)
    if publisher is not None and delivery_ids:
        publisher.publish(Outbox(deliveries=list(delivery_ids)))
    logger.info("broadcast %s done", broadcast_id)
    return "done"


@shared_task(name="broadcast.send", queue="io", acks_late=True)
def send_broadcast(broadcast_id: int) -> str:
    """Send a broadcast for up to the run budget, then re-publish itself to continue."""
    from tasks.context import get_context

    ctx = get_context()
    if ctx.config.telegram.token is None:
        raise ValidationFailed("TELEGRAM_TOKEN is not set; cannot broadcast")
    # The process's one Bot; the run budget ends the run well inside the io time limit.
    budget = min(RUN_BUDGET_SECONDS, max(1.0, ctx.config.broker.io_time_limit * 0.75))
    status = ctx.call_telegram(
        lambda bot: run_broadcast(
            ctx.db,
            bot,
            broadcast_id,
            publisher=ctx.publisher,
            rate=ctx.config.telegram.bulk_messages_per_second,
            budget_seconds=budget,
        )
    )
    if status == "more":
        enqueue_broadcast(ctx.celery, broadcast_id)
    return status
