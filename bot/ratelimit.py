"""Flood control of users' updates coming in (outgoing calls: `telegram_ui.client`).

`UpdateRateLimiter` counts each user's updates per minute in memory, a cheap check before any
database work."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60.0


@dataclass
class _Window:
    started: float
    count: int = 0
    warned: bool = False


class Verdict:
    """What to do with an update: process it, warn once, or drop it silently."""

    ALLOW = "allow"
    WARN = "warn"
    DROP = "drop"


class UpdateRateLimiter:
    """Fixed one-minute windows per user: over the limit, warn once then drop the rest."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._windows: dict[int, _Window] = {}
        self._last_purge = clock()

    def check(self, user_id: int) -> str:
        """Count one update of `user_id` and return a `Verdict`."""
        now = self.clock()
        self._purge(now)
        window = self._windows.get(user_id)
        if window is None or now - window.started >= WINDOW_SECONDS:
            window = self._windows[user_id] = _Window(started=now)
        window.count += 1
        if window.count <= self.per_minute:
            return Verdict.ALLOW
        if not window.warned:
            window.warned = True
            return Verdict.WARN
        return Verdict.DROP

    def _purge(self, now: float) -> None:
        # Keeps memory bounded by the users active in the last minute.
        if now - self._last_purge < WINDOW_SECONDS:
            return
        self._last_purge = now
        stale = [uid for uid, w in self._windows.items() if now - w.started >= WINDOW_SECONDS]
        for uid in stale:
            del self._windows[uid]
