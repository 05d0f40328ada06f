"""Concurrent update processing that keeps each user's updates in order.

Different users are served in parallel (one slow selfie check never delays someone else), while
one user's updates run one at a time, so "send a photo, then press a button" is handled in the
order it was sent and their conversation state is never written by two handlers at once.

Flood control decides before an update joins its user's queue: an update over the user's
per-minute limit (`bot.ratelimit.UpdateRateLimiter`) runs at once, outside the queue, and the
gate handler only answers or drops it (no flow handler runs for it). Every update the limit
lets through waits its turn, however long the queue: a 10-photo album is handled whole and in
order. The limit also bounds how many concurrency slots one user's queue can hold.

With an inbox (`domain.inbox`, the production bot), an update whose handler already finished is
not handled again (a replay, or a copy Telegram or the relay sent twice), and each handled one
is marked done there once its handler returned: until then a bot that restarts replays it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Collection, Coroutine
from typing import Any

from telegram import Update
from telegram.ext import BaseUpdateProcessor

from bot.ratelimit import UpdateRateLimiter, Verdict
from db.session import Database
from domain import inbox

logger = logging.getLogger(__name__)


class PerUserUpdateProcessor(BaseUpdateProcessor):
    """Parallel across users, sequential per user, flood excess dropped before queueing."""

    def __init__(
        self,
        max_concurrent_updates: int = 256,
        *,
        rate_limiter: UpdateRateLimiter | None = None,
        exempt: Collection[int] = (),
        db: Database | None = None,
    ) -> None:
        super().__init__(max_concurrent_updates)
        # The inbox's database: updates handled once, marked done after their handler.
        self.db = db
        # Update ids queued or running in this process: a second copy is dropped at once.
        self._active: set[int] = set()
        # Update ids this process has just stored in the inbox (`bot.polling.accept`): a row
        # inserted a moment ago cannot be done, so their handling skips the inbox read.
        self.fresh: set[int] = set()
        self.rate_limiter = rate_limiter
        # Admins are not flood-limited (they run /broadcast and /stats in bursts).
        self.exempt = frozenset(exempt)
        self._locks: dict[int, asyncio.Lock] = {}
        self._waiting: dict[int, int] = {}

    @staticmethod
    def _key(update: object) -> int | None:
        if isinstance(update, Update) and update.effective_user is not None:
            return update.effective_user.id
        return None

    def _admit(self, update: Update, user_id: int) -> str:
        """The flood verdict of this update, counted once and left for the gate to act on."""
        if self.rate_limiter is None or user_id in self.exempt:
            return Verdict.ALLOW
        verdict = self.rate_limiter.check(user_id)
        self.rate_limiter.decide(update.update_id, verdict)
        return verdict

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        """Await the coroutine under the user's lock (or directly for non-user updates and for
        updates over the flood limit, which the gate ends at once)."""
        update_id = update.update_id if isinstance(update, Update) else None
        if update_id is not None:
            if update_id in self._active:
                _discard(coroutine)
                return
            self._active.add(update_id)
        try:
            await self._ordered(update, coroutine)
        finally:
            if update_id is not None:
                self._active.discard(update_id)

    async def _ordered(self, update: object, coroutine: Awaitable[Any]) -> None:
        key = self._key(update)
        if key is None:
            await self._handle(update, coroutine)
            return
        assert isinstance(update, Update)
        if self._admit(update, key) != Verdict.ALLOW:
            await self._handle(update, coroutine)
            return
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            async with lock:
                await self._handle(update, coroutine)
        finally:
            self._waiting[key] -= 1
            if self._waiting[key] == 0:
                # Nobody else holds or waits for this lock: forget it to bound memory.
                del self._waiting[key]
                self._locks.pop(key, None)

    async def _handle(self, update: object, coroutine: Awaitable[Any]) -> None:
        """Run the handlers, unless the inbox says they already finished; then mark it done.

        The inbox is read in the user's turn, so a replay never overtakes the user's queue. When
        the database cannot be reached the update is handled anyway (its handlers need the
        database too, and say so); a mark that fails leaves it to be replayed at the next start,
        where the handlers that create jobs or move money find what they did."""
        if self.db is None or not isinstance(update, Update):
            await coroutine
            return
        if update.update_id in self.fresh:
            self.fresh.discard(update.update_id)
            done = False
        else:
            try:
                done = await self.db.run(inbox.is_done, update.update_id)
            except Exception as exc:
                logger.warning("update %s: the inbox cannot be read (%s)", update.update_id, exc)
                done = False
        if done:
            logger.info("update %s was handled before; not again", update.update_id)
            _discard(coroutine)
            return
        await coroutine
        try:
            await self.db.run(inbox.finish, update.update_id)
        except Exception as exc:
            logger.warning("update %s: not marked done (%s)", update.update_id, exc)

    async def initialize(self) -> None:
        """Nothing to set up."""

    async def shutdown(self) -> None:
        """Nothing to tear down."""


def _discard(coroutine: Awaitable[Any]) -> None:
    """Drop a handler coroutine that will not run (without a never-awaited warning)."""
    if isinstance(coroutine, Coroutine):
        coroutine.close()
