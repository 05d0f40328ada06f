"""Flood control of users' updates coming in (outgoing calls: `telegram_ui.client`).

`UpdateRateLimiter` counts each user's updates per minute in memory, a cheap check before any
database work. The update processor (`bot.processor`) asks it before an update joins its user's
queue and leaves the verdict here (`decide`); the gate handler acts on it (`verdict_for`). The
language each user chose is remembered here too, so the slow-down reply needs no database."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60.0
# Bounds on the in-memory maps (oldest entries go first beyond them).
MAX_DECIDED = 10_000
MAX_LANGUAGES = 100_000


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
        self._decided: dict[int, str] = {}
        self._languages: dict[int, str] = {}

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

    def decide(self, update_id: int, verdict: str) -> None:
        """Keep the verdict counted for an update until the gate asks for it."""
        if len(self._decided) >= MAX_DECIDED:
            self._decided.pop(next(iter(self._decided)))
        self._decided[update_id] = verdict

    def verdict_for(self, user_id: int, update_id: int) -> str:
        """The verdict already counted for this update, else count it now."""
        verdict = self._decided.pop(update_id, None)
        return verdict if verdict is not None else self.check(user_id)

    def remember_language(self, user_id: int, language: str) -> None:
        """The language this user answers in (their stored choice), for the slow-down reply."""
        if self._languages.get(user_id) == language:
            return
        if len(self._languages) >= MAX_LANGUAGES:
            self._languages.pop(next(iter(self._languages)))
        self._languages[user_id] = language

    def language_of(self, user_id: int) -> str | None:
        """The remembered language of a user, if any update of theirs got past the gate."""
        return self._languages.get(user_id)

    def _purge(self, now: float) -> None:
        # Keeps memory bounded by the users active in the last minute.
        if now - self._last_purge < WINDOW_SECONDS:
            return
        self._last_purge = now
        stale = [uid for uid, w in self._windows.items() if now - w.started >= WINDOW_SECONDS]
        for uid in stale:
            del self._windows[uid]
