"""Concurrent update processing that keeps each user's updates in order.

Different users are served in parallel (one slow selfie check never delays someone else), while
one user's updates run one at a time, so "send a photo, then press a button" is handled in the
order it was sent and their conversation state is never written by two handlers at once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from telegram import Update
from telegram.ext import BaseUpdateProcessor

logger = logging.getLogger(__name__)


class PerUserUpdateProcessor(BaseUpdateProcessor):
    """Parallel across users, sequential per user."""

    def __init__(
        self, max_concurrent_updates: int = 256, *, max_waiting_per_user: int = 8
    ) -> None:
        super().__init__(max_concurrent_updates)
        # Beyond this many queued updates of one user (a flood) the extra ones skip the queue:
        # the rate limiter drops them at once, and they must not hold concurrency slots that
        # other users need while they wait.
        self.max_waiting_per_user = max_waiting_per_user
        self._locks: dict[int, asyncio.Lock] = {}
        self._waiting: dict[int, int] = {}

    @staticmethod
    def _key(update: object) -> int | None:
        if isinstance(update, Update) and update.effective_user is not None:
            return update.effective_user.id
        return None

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        """Await the coroutine under the user's lock (or directly for non-user updates)."""
        key = self._key(update)
        if key is None:
            await coroutine
            return
        if self._waiting.get(key, 0) >= self.max_waiting_per_user:
            await coroutine
            return
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            async with lock:
                await coroutine
        finally:
            self._waiting[key] -= 1
            if self._waiting[key] == 0:
                # Nobody else holds or waits for this lock: forget it to bound memory.
                del self._waiting[key]
                self._locks.pop(key, None)

    async def initialize(self) -> None:
        """Nothing to set up."""

    async def shutdown(self) -> None:
        """Nothing to tear down."""
