"""Long polling that loses no update: each one is in the inbox before Telegram is told.

PTB's `Updater` confirms an update (the next getUpdates' offset) as soon as it is in the
in-memory update queue, so a bot killed with updates in hand never sees them again. This loop
stores every polled update in the inbox (`domain.inbox`) and commits that before it asks for
the next batch; a copy stored before is not queued again. A bot that starts queues the
unfinished updates of the inbox first (`replay_unfinished`), in update order, so each user's
updates keep their order. The update processor marks each done after its handler
(`bot.processor`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from telegram import Update
from telegram.error import Conflict, InvalidToken, RetryAfter
from telegram.ext import Application

from bot.processor import PerUserUpdateProcessor
from db.session import Database
from domain import inbox
from telegram_ui.client import retry_after_seconds

logger = logging.getLogger(__name__)

# Seconds Telegram holds a getUpdates call open when there is nothing new.
POLL_TIMEOUT_S = 10
# Pause after a failed getUpdates or inbox write (doubling up to the maximum).
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
# bot_data key: the update ids this process replayed from the inbox.
REPLAYED_KEY = "replayed_updates"

AnyApplication = Application[Any, Any, Any, Any, Any, Any]


def _as_update(application: AnyApplication, data: dict[str, Any]) -> Update | None:
    try:
        return Update.de_json(data, application.bot)
    except (KeyError, TypeError, ValueError):
        logger.warning("inbox: dropping a stored payload that is not a Telegram update")
        return None


def was_replayed(bot_data: dict[str, Any], update_id: int) -> bool:
    """Whether this process took the update from the inbox (a bot before it died while
    handling it): a handler that finds its work done still answers, in case that bot never
    did."""
    replayed: set[int] = bot_data.get(REPLAYED_KEY, set())
    return update_id in replayed


async def replay_unfinished(application: AnyApplication, db: Database) -> int:
    """Queue the inbox's unfinished updates (the last bot died before their handlers
    finished); how many. Called before any new update is taken."""
    count = 0
    replayed: set[int] = application.bot_data.setdefault(REPLAYED_KEY, set())
    for data in await db.run(inbox.unfinished):
        update = _as_update(application, data)
        if update is not None:
            replayed.add(update.update_id)
            await application.update_queue.put(update)
            count += 1
    if count:
        logger.warning("replaying %d updates a stopped bot had not finished", count)
    return count


async def accept(application: AnyApplication, db: Database, data: dict[str, Any]) -> bool:
    """Store one received update, then queue it; False when it was stored before (not queued
    again) or is not an update. Returns only once the inbox row is committed."""
    return await accept_batch(application, db, [data]) == 1


async def accept_batch(
    application: AnyApplication, db: Database, batch: Sequence[dict[str, Any]]
) -> int:
    """Store received updates in one transaction, then queue those not stored before, in
    order; how many were queued. Returns only once the inbox rows are committed."""
    parsed = [(_as_update(application, data), data) for data in batch]
    received = [(update, data) for update, data in parsed if update is not None]
    if not received:
        return 0
    stored = set(await db.run(inbox.store_batch, [(u.update_id, d) for u, d in received]))
    processor = application.update_processor
    for update, _ in received:
        if update.update_id in stored:
            if isinstance(processor, PerUserUpdateProcessor):
                processor.fresh.add(update.update_id)
            await application.update_queue.put(update)
    return len(stored)


class DurablePoller:
    """getUpdates in a loop; the offset moves past an update only once it is in the inbox."""

    def __init__(
        self,
        application: AnyApplication,
        db: Database,
        *,
        allowed_updates: Sequence[str],
        timeout: int = POLL_TIMEOUT_S,
    ) -> None:
        self.application = application
        self.db = db
        self.allowed_updates = list(allowed_updates)
        self.timeout = timeout
        self._offset: int | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether the loop runs (the bot's readiness probe)."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Remove any webhook (getUpdates refuses to run beside one) and start polling."""
        await self.application.bot.delete_webhook(drop_pending_updates=False)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="durable-poller")

    async def stop(self) -> None:
        """Stop polling; updates stored but not yet handled wait in the inbox."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            try:
                await self.poll_once()
                delay = RETRY_FIRST_S
            except InvalidToken:
                logger.error("getUpdates: the token was revoked; polling stops")
                raise
            except RetryAfter as exc:
                await asyncio.sleep(retry_after_seconds(exc))
            except Exception as exc:
                # Telegram or the database out of reach: nothing is confirmed meanwhile.
                if isinstance(exc, Conflict):
                    logger.error("getUpdates conflict (another bot polls this token): %s", exc)
                else:
                    logger.warning("polling: %s; again in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def poll_once(self) -> int:
        """One getUpdates; each update stored, then queued; how many were new."""
        bot = self.application.bot
        updates = await bot.get_updates(
            offset=self._offset,
            timeout=self.timeout,
            allowed_updates=self.allowed_updates,
            read_timeout=self.timeout + 10,
        )
        if not updates:
            return 0
        # Stored and committed (one transaction for the batch) before the next getUpdates
        # moves the offset past them.
        new = await accept_batch(self.application, self.db, [u.to_dict() for u in updates])
        self._offset = updates[-1].update_id + 1
        return new
