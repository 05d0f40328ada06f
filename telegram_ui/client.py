"""Calls to the Bot API from the bot and the io worker: Telegram's flood limits, and a retry
that never sends a message twice.

`TelegramLimiter` spaces what we send as Telegram documents (`telegram_ui.flood`): in each
private chat about one message a second with short bursts, in each group 20 a minute, and, for
messages the bot starts itself (broadcasts, scheduled notices: sent inside `bulk_sends`), about
30 a second in all. Nothing else waits: answering a button, a chat action or an edit goes at
once, and no chat's messages wait behind another chat's. On a 429 it waits the `retry_after`
Telegram asks for before trying again, holding back meanwhile what the 429 was about (that
chat, the bulk messages, or, for a call to no chat, every call). A 429 means Telegram did
nothing, so any call may be repeated. Network trouble is another matter:

- the connection was never made (refused, DNS, connect or pool timeout): Telegram got nothing,
  so the call is repeated whatever it is;
- Telegram answered with a 5xx: it reports that it failed the call, so it is repeated too;
- anything after the request was written (a read timeout, a dropped connection) means Telegram
  may have acted on it: only idempotent calls (reads, edits, answers, deletes, settings) are
  repeated; a `sendMessage` or `sendMediaGroup` is not, and the error reaches the caller.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, TypeVar

import aiohttp
import httpx
from telegram import Bot
from telegram.error import BadRequest, NetworkError, RetryAfter, TimedOut
from telegram.ext import BaseRateLimiter, ExtBot
from telegram.request import HTTPXRequest

from core.settings import TelegramSettings
from telegram_ui.flood import (
    BULK_PER_SECOND,
    Schedule,
    TokenBucket,
    chat_schedule,
    posts_message,
)
from telegram_ui.flood_shared import SharedSchedules, shared_flood_url

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
T = TypeVar("T")


class DeadlineExceeded(TimedOut):
    """A Bot API call was cut off at its task's deadline (it may have reached Telegram)."""


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
    if isinstance(exc, DeadlineExceeded):
        # Cut off mid-flight: the request may have been written already.
        return True
    cause = _transport_cause(exc)
    if cause is None:
        # No transport error underneath: Telegram answered, with an error status.
        return False
    return not isinstance(cause, _NOT_SENT)


def too_large(exc: NetworkError) -> bool:
    """Whether Telegram refused the request as too large (HTTP 413; PTB raises a plain
    NetworkError for it): the same upload is refused every time."""
    text = str(exc).lower()
    return "(413)" in text or "entity too large" in text


def safe_to_repeat(endpoint: str, exc: NetworkError) -> bool:
    """Whether the call may be sent again after `exc` without risking a duplicate."""
    if isinstance(exc, BadRequest) or too_large(exc):
        # Our request is wrong (BadRequest is a subclass of NetworkError in PTB), or too large:
        # repeating won't help.
        return False
    return endpoint.startswith(IDEMPOTENT_PREFIXES) or not may_have_reached_telegram(exc)


# Set inside `bulk_sends`: the messages sent are the bot's own, not answers to an update.
_BULK: ContextVar[bool] = ContextVar("telegram_bulk", default=False)
# Extra wait after a 429's retry_after (as PTB's AIORateLimiter).
RETRY_AFTER_MARGIN = 0.1
# Chat schedules kept before idle ones are forgotten.
MAX_CHAT_SCHEDULES = 1024


@contextlib.contextmanager
def bulk_sends() -> Iterator[None]:
    """Messages sent in this block are ones the bot starts itself (a broadcast, a scheduled
    notice, an admin alert): they take the bulk limit as well as their chat's.

    A context variable: set it in the coroutine that sends (on the loop that runs it), not
    around `BotRunner.run`, whose calls run on another thread."""
    token = _BULK.set(True)
    try:
        yield
    finally:
        _BULK.reset(token)


async def as_bulk(call: Awaitable[T]) -> T:
    """Await `call` inside `bulk_sends`."""
    with bulk_sends():
        return await call


class TelegramLimiter(BaseRateLimiter[int]):
    """Telegram's flood limits per chat and for bulk messages, RetryAfter honoured, and
    network retries that cannot duplicate (module docstring).

    A RetryAfter longer than `max_retry_after` is not waited out here: it reaches the caller,
    which can reschedule (the io worker retries the task later) instead of blocking.

    With `shared` (a Redis broker), the chats' schedules and their 429 pauses are booked in
    Redis, so the bot, the io workers and the web's Mini App count one chat's messages together
    (`telegram_ui.flood_shared`); Redis out of reach falls back to this process's own
    schedules. Without it (the embedded broker) each process keeps its own. The bulk limit is
    always this process's own."""

    def __init__(
        self,
        *,
        max_retries: int = 3,
        network_retries: int = 3,
        max_retry_after: float = 60.0,
        backoff: float = 0.5,
        bulk_per_second: float = BULK_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        shared: SharedSchedules | None = None,
    ) -> None:
        self.max_retries = max_retries
        self.network_retries = network_retries
        self.max_retry_after = max_retry_after
        self.backoff = backoff
        self.clock = clock
        self._sleep = sleep
        self.bulk = TokenBucket(bulk_per_second, 1)
        self._chats: dict[object, Schedule] = {}
        self.shared = shared
        # Bulk bookings in Redis one at a time, so the bulk schedule is committed in order.
        self._bulk_lock = asyncio.Lock()
        # A 429 on a call to no chat holds back every call until then.
        self._paused_until = float("-inf")

    async def initialize(self) -> None:
        """Nothing to set up."""

    async def shutdown(self) -> None:
        """Close the shared schedules' Redis connection, if any."""
        if self.shared is not None:
            await self.shared.close()

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, JSONResult]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> JSONResult:
        """Wait for the call's turn and call the Bot API, retrying as the module docstring says.

        `rate_limit_args`, when given, is the number of RetryAfter retries for this call."""
        chat_id = data.get("chat_id")
        bulk = _BULK.get() and posts_message(endpoint)
        max_retries = self.max_retries if rate_limit_args is None else rate_limit_args
        waits = 0
        attempt = 0
        while True:
            try:
                await self._turn(endpoint, chat_id, bulk)
                return await callback(*args, **kwargs)
            except RetryAfter as exc:
                seconds = retry_after_seconds(exc)
                if seconds > self.max_retry_after or waits >= max_retries:
                    raise
                waits += 1
                logger.info("%s: Telegram asks to wait %.1f s; waiting", endpoint, seconds)
                self._pause(chat_id, bulk, self.clock() + seconds + RETRY_AFTER_MARGIN)
                if self.shared is not None and chat_id is not None:
                    await self.shared.pause(chat_id, seconds + RETRY_AFTER_MARGIN)
                continue
            except NetworkError as exc:
                if attempt >= self.network_retries or not safe_to_repeat(endpoint, exc):
                    raise
                logger.warning("%s: network error (%s); retrying", endpoint, exc)
                await self.sleep(self._delay(attempt))
            attempt += 1

    async def sleep(self, seconds: float) -> None:
        """Wait (asyncio.sleep unless the limiter was given another)."""
        await (self._sleep or asyncio.sleep)(seconds)

    def schedule_of(self, chat_id: object) -> Schedule:
        """The flood schedule of one chat (made on first use)."""
        key = str(chat_id)
        found = self._chats.get(key)
        if found is None:
            if len(self._chats) >= MAX_CHAT_SCHEDULES:
                self._forget_idle()
            found = self._chats[key] = chat_schedule(chat_id)
        return found

    async def _turn(self, endpoint: str, chat_id: object, bulk: bool) -> None:
        """Wait until this call may go: a message books its chat's (and the bulk) schedule;
        anything else waits only for a pause after a 429."""
        now = self.clock()
        chat = self.schedule_of(chat_id) if chat_id is not None else None
        at = max(now, self._paused_until)
        if chat is not None:
            at = max(at, chat.paused_until)
            if posts_message(endpoint):
                at = await self._book(chat_id, chat, at, bulk)
        wait = at - self.clock()
        if wait > 0:
            await self.sleep(wait)
        # A 429 that came meanwhile (booked times do not move): wait it out once.
        pause = max(self._paused_until, chat.paused_until if chat is not None else -math.inf)
        if bulk:
            pause = max(pause, self.bulk.paused_until)
        late = pause - self.clock()
        if late > 0:
            await self.sleep(late)

    async def _book(self, chat_id: object, chat: Schedule, at: float, bulk: bool) -> float:
        """Book a message to `chat_id` at or after `at`: its send time."""
        if self.shared is None:
            return self._book_here(chat, at, bulk)
        if not bulk:
            booked = await self._book_shared(chat_id, at)
            return self._book_here(chat, at, bulk) if booked is None else booked
        async with self._bulk_lock:
            booked = await self._book_shared(chat_id, self.bulk.earliest(at))
            if booked is None:
                return self._book_here(chat, at, bulk)
            self.bulk.commit(booked)
            return booked

    async def _book_shared(self, chat_id: object, at: float) -> float | None:
        """Book in Redis (every process's messages to the chat); None if it is out of reach."""
        assert self.shared is not None
        now = self.clock()
        delay = await self.shared.book(chat_id, at - now)
        return None if delay is None else now + delay

    def _book_here(self, chat: Schedule, at: float, bulk: bool) -> float:
        """Book in this process's own schedules."""
        at = chat.earliest(at)
        if bulk:
            # The later of the two, then booked in both (a booked time is never early).
            at = chat.earliest(self.bulk.earliest(at))
            self.bulk.commit(at)
        chat.commit(at)
        return at

    def _pause(self, chat_id: object, bulk: bool, until: float) -> None:
        """Hold back what a 429 was about until `until`."""
        if chat_id is None:
            self._paused_until = max(self._paused_until, until)
            return
        self.schedule_of(chat_id).pause(until)
        if bulk:
            self.bulk.pause(until)

    def _forget_idle(self) -> None:
        now = self.clock()
        for key in [k for k, s in self._chats.items() if s.idle(now)]:
            del self._chats[key]

    def _delay(self, attempt: int) -> float:
        # Jitter so that many handlers hit by one outage do not retry in lockstep.
        return float(self.backoff * 2**attempt * (0.5 + random.random()))


def make_limiter(settings: TelegramSettings, broker_url: str | None = None) -> TelegramLimiter:
    """The limiter for a process sending as this bot: its chats' schedules shared through the
    broker's Redis when the broker is Redis (`BrokerSettings.effective_url`), else its own."""
    url = shared_flood_url(broker_url)
    shared = None
    if url is not None:
        token = settings.token.get_secret_value() if settings.token is not None else ""
        # The bot's id (the token's first part): two bots' limits in one chat are separate.
        shared = SharedSchedules(url, namespace=token.split(":", 1)[0])
    return TelegramLimiter(bulk_per_second=settings.bulk_messages_per_second, shared=shared)


def make_bot(settings: TelegramSettings, broker_url: str | None = None) -> Bot:
    """A Bot for the configured (possibly self-hosted) Bot API server, throttled and retrying;
    `broker_url` as `make_limiter`."""
    if settings.token is None:
        raise RuntimeError("TELEGRAM_TOKEN is not set")
    return ExtBot(
        settings.token.get_secret_value(),
        base_url=settings.api_base_url,
        base_file_url=settings.file_base_url,
        # One Bot serves every io thread of a worker (`BotRunner`): a pool for all of them, and
        # every call bounded (connect, pool wait, read, write) so none can hang a task.
        request=HTTPXRequest(
            connection_pool_size=16,
            connect_timeout=10,
            pool_timeout=10,
            read_timeout=30,
            write_timeout=120,
            media_write_timeout=120,
        ),
        rate_limiter=make_limiter(settings, broker_url),
    )


class BotRunner:
    """One initialised Bot per process, on an event loop of its own (a daemon thread).

    The io worker runs its tasks on threads; each submits its Bot API coroutine here, so the
    process keeps one HTTP connection pool and calls getMe once, not once per delivery or
    progress edit. `run` waits at most `timeout` seconds: a call still hanging then is
    cancelled and `DeadlineExceeded` raised, which enforces the io time limit that Celery's
    threads pool does not."""

    def __init__(self, factory: Callable[[], Bot]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._bot: Bot | None = None
        self._init_lock: asyncio.Lock | None = None

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=loop.run_forever, name="bot-api", daemon=True
                )
                self._thread.start()
                self._loop = loop
            return self._loop

    async def _ready_bot(self) -> Bot:
        if self._init_lock is None:
            self._init_lock = asyncio.Lock()
        async with self._init_lock:
            if self._bot is None:
                bot = self._factory()
                try:
                    await bot.initialize()  # getMe, once per process
                except BaseException:
                    await bot.shutdown()
                    raise
                self._bot = bot
            return self._bot

    async def _call(self, fn: Callable[[Bot], Awaitable[T]]) -> T:
        return await fn(await self._ready_bot())

    def run(self, fn: Callable[[Bot], Awaitable[T]], timeout: float) -> T:
        """Run `fn(bot)` on the shared loop; DeadlineExceeded after `timeout` seconds."""
        future = asyncio.run_coroutine_threadsafe(self._call(fn), self._ensure_loop())
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise DeadlineExceeded(f"Bot API call cut off after {timeout:g} s") from None

    def close(self, timeout: float = 5.0) -> None:
        """Shut the Bot's HTTP clients and stop the loop."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is None:
            return
        bot, self._bot = self._bot, None
        if bot is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(bot.shutdown(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)
