"""Flood control both ways: users' updates coming in, and our requests going out to Telegram.

`UpdateRateLimiter` counts each user's updates per minute in memory (a cheap check before any
database work); `TelegramRetry` is the ExtBot rate limiter that honours `RetryAfter` and retries
transient network errors, so handlers never lose a reply to a 429 or a 502."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from telegram.error import BadRequest, NetworkError, RetryAfter, TimedOut
from telegram.ext import BaseRateLimiter

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


def retry_after_seconds(exc: RetryAfter) -> float:
    """The wait Telegram asked for, in seconds (int or timedelta depending on PTB settings)."""
    value = exc._retry_after  # the timedelta, without PTB's deprecation shim
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class TelegramRetry(BaseRateLimiter[None]):
    """Retry Bot API calls on RetryAfter (after the asked delay) and on network errors.

    A timed-out send may already have been delivered, so timeouts are retried only for
    requests that are safe to repeat (edits, answers, reads); refused connections and 5xx
    answers mean Telegram did not act on the request and are retried for every method.
    """

    SAFE_PREFIXES = ("get", "edit", "answer", "delete", "set", "leave")

    def __init__(
        self,
        *,
        max_retries: int = 3,
        max_retry_after: float = 60.0,
        backoff: float = 0.5,
    ) -> None:
        self.max_retries = max_retries
        self.max_retry_after = max_retry_after
        self.backoff = backoff

    async def initialize(self) -> None:
        """Nothing to set up."""

    async def shutdown(self) -> None:
        """Nothing to tear down."""

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, bool | dict[str, Any] | list[dict[str, Any]]]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: None,
    ) -> bool | dict[str, Any] | list[dict[str, Any]]:
        """Call the Bot API, retrying as described in the class docstring."""
        attempt = 0
        while True:
            try:
                return await callback(*args, **kwargs)
            except RetryAfter as exc:
                wait = retry_after_seconds(exc)
                if attempt >= self.max_retries or wait > self.max_retry_after:
                    raise
                logger.warning("%s: Telegram asks to wait %.1f s", endpoint, wait)
                await asyncio.sleep(wait)
            except BadRequest:
                # Our request is wrong (a subclass of NetworkError in PTB); repeating won't help.
                raise
            except TimedOut:
                if attempt >= self.max_retries or not endpoint.startswith(self.SAFE_PREFIXES):
                    raise
                await asyncio.sleep(self._delay(attempt))
            except NetworkError as exc:
                if attempt >= self.max_retries:
                    raise
                logger.warning("%s: network error (%s); retrying", endpoint, exc)
                await asyncio.sleep(self._delay(attempt))
            attempt += 1

    def _delay(self, attempt: int) -> float:
        # Jitter so that many handlers hit by one outage do not retry in lockstep.
        return float(self.backoff * 2**attempt * (0.5 + random.random()))
