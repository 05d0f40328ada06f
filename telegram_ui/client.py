"""Calls to the Bot API from the bot and the io worker: PTB's `AIORateLimiter` plus a retry that
never sends a message twice.

`AIORateLimiter` spaces our requests under Telegram's flood limits and, on a 429, waits the
`retry_after` Telegram asks for (pausing every request meanwhile) before trying again. A 429
means Telegram did nothing, so any call may be repeated. Network trouble is another matter:

- the connection was never made (refused, DNS, connect or pool timeout): Telegram got nothing,
  so the call is repeated whatever it is;
- Telegram answered with a 5xx: it reports that it failed the call, so it is repeated too;
- anything after the request was written (a read timeout, a dropped connection) means Telegram
  may have acted on it: only idempotent calls (reads, edits, answers, deletes, settings) are
  repeated; a `sendMessage` or `sendMediaGroup` is not, and the error reaches the caller.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import aiohttp
import httpx
from telegram import Bot
from telegram.error import BadRequest, NetworkError, RetryAfter
from telegram.ext import AIORateLimiter, ExtBot
from telegram.request import HTTPXRequest

from core.settings import TelegramSettings

logger = logging.getLogger(__name__)

# Bot API methods that change nothing when repeated.
IDEMPOTENT_PREFIXES = ("get", "edit", "answer", "delete", "set", "leave")
# Transport errors raised before a byte of the request reached Telegram.
_NOT_SENT: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)
JSONResult = bool | dict[str, Any] | list[dict[str, Any]]


def retry_after_seconds(exc: RetryAfter) -> float:
    """The wait Telegram asked for, in seconds."""
    value = exc._retry_after  # the timedelta, without PTB's deprecation shim
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _transport_cause(exc: BaseException) -> BaseException | None:
    cause = exc.__cause__
    while cause is not None and isinstance(cause, NetworkError):
        cause = cause.__cause__
    return cause


def may_have_reached_telegram(exc: NetworkError) -> bool:
    """Whether Telegram may have acted on the request that failed with `exc`.

    A transport failure before the request went out says no; so does an HTTP error answer
    (PTB raises those without a transport cause). Everything else says maybe."""
    cause = _transport_cause(exc)
    if cause is None:
        # No transport error underneath: Telegram answered, with an error status.
        return False
    return not isinstance(cause, _NOT_SENT)


def safe_to_repeat(endpoint: str, exc: NetworkError) -> bool:
    """Whether the call may be sent again after `exc` without risking a duplicate."""
    if isinstance(exc, BadRequest):
        # Our request is wrong (a subclass of NetworkError in PTB); repeating won't help.
        return False
    return endpoint.startswith(IDEMPOTENT_PREFIXES) or not may_have_reached_telegram(exc)


class _WaitTooLong(Exception):
    """Carries a RetryAfter longer than we are willing to wait past AIORateLimiter."""

    def __init__(self, error: RetryAfter) -> None:
        super().__init__(str(error))
        self.error = error


class TelegramLimiter(AIORateLimiter):
    """`AIORateLimiter` (throttling, RetryAfter) plus network retries that cannot duplicate.

    A RetryAfter longer than `max_retry_after` is not waited out here: it reaches the caller,
    which can reschedule (the io worker retries the task later) instead of blocking."""

    def __init__(
        self,
        *,
        max_retries: int = 3,
        network_retries: int = 3,
        max_retry_after: float = 60.0,
        backoff: float = 0.5,
    ) -> None:
        super().__init__(max_retries=max_retries)
        self.network_retries = network_retries
        self.max_retry_after = max_retry_after
        self.backoff = backoff

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, JSONResult]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> JSONResult:
        """Throttle and call the Bot API, retrying as the module docstring says."""

        async def call(*a: Any, **kw: Any) -> JSONResult:
            try:
                return await callback(*a, **kw)
            except RetryAfter as exc:
                if retry_after_seconds(exc) > self.max_retry_after:
                    raise _WaitTooLong(exc) from exc
                raise

        attempt = 0
        while True:
            try:
                return await super().process_request(
                    call, args, kwargs, endpoint, data, rate_limit_args
                )
            except _WaitTooLong as wrapped:
                raise wrapped.error from None
            except NetworkError as exc:
                if attempt >= self.network_retries or not safe_to_repeat(endpoint, exc):
                    raise
                logger.warning("%s: network error (%s); retrying", endpoint, exc)
                await asyncio.sleep(self._delay(attempt))
            attempt += 1

    def _delay(self, attempt: int) -> float:
        # Jitter so that many handlers hit by one outage do not retry in lockstep.
        return float(self.backoff * 2**attempt * (0.5 + random.random()))


def make_bot(settings: TelegramSettings) -> Bot:
    """A Bot for the configured (possibly self-hosted) Bot API server, throttled and retrying."""
    if settings.token is None:
        raise RuntimeError("TELEGRAM_TOKEN is not set")
    return ExtBot(
        settings.token.get_secret_value(),
        base_url=settings.api_base_url,
        base_file_url=settings.file_base_url,
        request=HTTPXRequest(
            connection_pool_size=4, read_timeout=30, write_timeout=120, media_write_timeout=120
        ),
        rate_limiter=TelegramLimiter(),
    )
