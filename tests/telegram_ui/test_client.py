"""Calls to the Bot API: AIORateLimiter's RetryAfter handling, and network retries that never
send a message twice."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import aiohttp
import httpx
import pytest
from telegram.error import BadRequest, NetworkError, RetryAfter, TimedOut
from telegram.ext import AIORateLimiter

from telegram_ui.client import TelegramLimiter, may_have_reached_telegram, safe_to_repeat


def raised_from(cause: BaseException, error: type[NetworkError] = NetworkError) -> NetworkError:
    """A PTB error as the transports raise it: `raise NetworkError(...) from <cause>`."""
    try:
        raise error("transport failed") from cause
    except NetworkError as exc:
        return exc


def connect_refused() -> NetworkError:
    key = aiohttp.client_reqrep.ConnectionKey(
        "api.telegram.org", 443, True, True, None, None, None
    )
    return raised_from(aiohttp.ClientConnectorError(key, OSError(111, "refused")))


def disconnected() -> NetworkError:
    return raised_from(aiohttp.ServerDisconnectedError())


class Script:
    """A Bot API call that fails with the given errors, then answers."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return {"ok": True}


async def call(limiter: TelegramLimiter, endpoint: str, script: Script) -> Any:
    return await limiter.process_request(script, (), {}, endpoint, {"chat_id": 1}, None)


@pytest.fixture
def limiter(monkeypatch: pytest.MonkeyPatch) -> TelegramLimiter:
    async def no_sleep(seconds: float) -> None:
        return None

    monkeypatch.setattr("telegram_ui.client.asyncio.sleep", no_sleep)
    monkeypatch.setattr("telegram.ext._aioratelimiter.asyncio.sleep", no_sleep)
    return TelegramLimiter(max_retries=2, network_retries=3)


class TestClassification:
    def test_what_may_have_reached_telegram(self) -> None:
        assert not may_have_reached_telegram(connect_refused())
        assert not may_have_reached_telegram(raised_from(httpx.ConnectError("refused")))
        assert not may_have_reached_telegram(raised_from(httpx.PoolTimeout("busy"), TimedOut))
        # A 5xx answer: PTB raises it without a transport error underneath.
        assert not may_have_reached_telegram(NetworkError("Bad Gateway"))
        assert may_have_reached_telegram(disconnected())
        assert may_have_reached_telegram(raised_from(TimeoutError(), TimedOut))
        assert may_have_reached_telegram(raised_from(httpx.ReadTimeout("slow"), TimedOut))

    def test_what_may_be_repeated(self) -> None:
        assert safe_to_repeat("sendMessage", connect_refused())
        assert not safe_to_repeat("sendMessage", disconnected())
        assert not safe_to_repeat("sendMediaGroup", raised_from(TimeoutError(), TimedOut))
        assert safe_to_repeat("editMessageText", disconnected())
        assert safe_to_repeat("getFile", raised_from(TimeoutError(), TimedOut))
        assert not safe_to_repeat("editMessageText", BadRequest("message is not modified"))


class TestLimiter:
    def test_is_ptbs_aioratelimiter(self) -> None:
        assert isinstance(TelegramLimiter(), AIORateLimiter)

    async def test_retry_after_is_waited_out(self, limiter: TelegramLimiter) -> None:
        script = Script(RetryAfter(1), RetryAfter(timedelta(seconds=2)))
        assert await call(limiter, "sendMessage", script) == {"ok": True}
        assert script.calls == 3

    async def test_a_long_retry_after_reaches_the_caller(self, limiter: TelegramLimiter) -> None:
        script = Script(RetryAfter(3600))
        with pytest.raises(RetryAfter):
            await call(limiter, "sendMessage", script)
        assert script.calls == 1

    async def test_unsent_send_is_repeated(self, limiter: TelegramLimiter) -> None:
        script = Script(connect_refused(), NetworkError("Bad Gateway"))
        assert await call(limiter, "sendMessage", script) == {"ok": True}
        assert script.calls == 3

    async def test_send_that_may_have_arrived_is_not_repeated(
        self, limiter: TelegramLimiter
    ) -> None:
        script = Script(disconnected())
        with pytest.raises(NetworkError):
            await call(limiter, "sendMessage", script)
        assert script.calls == 1

    async def test_idempotent_call_is_repeated_after_a_timeout(
        self, limiter: TelegramLimiter
    ) -> None:
        script = Script(raised_from(TimeoutError(), TimedOut), disconnected())
        assert await call(limiter, "editMessageText", script) == {"ok": True}
        assert script.calls == 3

    async def test_gives_up_after_the_network_retries(self, limiter: TelegramLimiter) -> None:
        script = Script(*(connect_refused() for _ in range(10)))
        with pytest.raises(NetworkError):
            await call(limiter, "sendMessage", script)
        assert script.calls == 4

    async def test_bad_request_is_not_repeated(self, limiter: TelegramLimiter) -> None:
        script = Script(BadRequest("chat not found"))
        with pytest.raises(BadRequest):
            await call(limiter, "editMessageText", script)
        assert script.calls == 1
