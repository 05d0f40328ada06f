"""Calls to the Bot API: Telegram's flood limits per chat and for bulk messages, RetryAfter
handling, and network retries that never send a message twice."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import aiohttp
import httpx
import pytest
from telegram.error import BadRequest, NetworkError, RetryAfter, TimedOut
from telegram.ext import BaseRateLimiter

from telegram_ui.client import (
    TelegramLimiter,
    bulk_sends,
    may_have_reached_telegram,
    safe_to_repeat,
)


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
    def test_is_a_ptb_rate_limiter(self) -> None:
        assert isinstance(TelegramLimiter(), BaseRateLimiter)

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


class FakeClock:
    """Time that moves only when a limiter sleeps (`advancing`) or the test moves it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def advancing(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Api:
    """Bot API calls that log (method, chat, fake time) when they reach Telegram."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.log: list[tuple[str, object, float]] = []
        self.errors: list[Exception] = []

    async def call(self, limiter: TelegramLimiter, method: str, **data: Any) -> Any:
        async def reach() -> dict[str, Any]:
            if self.errors:
                raise self.errors.pop(0)
            self.log.append((method, data.get("chat_id"), self.clock.now))
            return {"ok": True}

        return await limiter.process_request(reach, (), {}, method, data, None)

    def times(self, chat: object) -> list[float]:
        return [
            at
            for method, c, at in self.log
            if c == chat and method in ("sendMessage", "sendPhoto")
        ]


class TestFloodLimits:
    async def test_a_private_chats_messages_are_spaced_one_a_second_after_a_burst(self) -> None:
        clock = FakeClock()
        limiter = TelegramLimiter(clock=clock, sleep=clock.advancing)
        api = Api(clock)
        for _ in range(6):
            await api.call(limiter, "sendMessage", chat_id=7)
        assert api.times(7) == [0.0, 0.0, 0.0, 1.0, 2.0, 3.0]
        clock.now = 13.0  # idle long enough: a new burst
        for _ in range(4):
            await api.call(limiter, "sendPhoto", chat_id=7)
        assert api.times(7)[6:] == [13.0, 13.0, 13.0, 14.0]

    async def test_a_group_gets_twenty_messages_a_minute(self) -> None:
        clock = FakeClock()
        limiter = TelegramLimiter(clock=clock, sleep=clock.advancing)
        api = Api(clock)
        for _ in range(25):
            await api.call(limiter, "sendMessage", chat_id=-1001)
        assert api.times(-1001) == [0.0] * 20 + [60.0] * 5

    async def test_answers_actions_and_edits_are_not_counted(self) -> None:
        clock = FakeClock()
        limiter = TelegramLimiter(clock=clock, sleep=clock.advancing)
        api = Api(clock)
        for _ in range(10):
            await api.call(limiter, "sendChatAction", chat_id=7, action="typing")
            await api.call(limiter, "editMessageText", chat_id=7, message_id=1)
            await api.call(limiter, "answerCallbackQuery", callback_query_id="q")
        assert clock.slept == []

    async def test_bulk_messages_take_the_bulk_limit_answers_do_not(self) -> None:
        clock = FakeClock()
        limiter = TelegramLimiter(clock=clock, sleep=clock.advancing, bulk_per_second=20)
        api = Api(clock)
        for chat in range(1, 5):
            await api.call(limiter, "sendMessage", chat_id=chat)
        assert clock.now == 0.0  # replies in four chats: none waits for another
        with bulk_sends():
            for chat in range(11, 15):
                await api.call(limiter, "sendMessage", chat_id=chat)
        assert [api.times(c)[0] for c in range(11, 15)] == pytest.approx([0, 0.05, 0.1, 0.15])

    async def test_a_callback_answer_is_not_delayed_behind_another_chats_messages(
        self,
    ) -> None:
        clock = FakeClock()
        opened = asyncio.Event()

        async def held(seconds: float) -> None:  # a wait lasts until the test opens the gate
            clock.slept.append(seconds)
            await opened.wait()

        limiter = TelegramLimiter(clock=clock, sleep=held)
        api = Api(clock)
        queued = [
            asyncio.create_task(api.call(limiter, "sendMessage", chat_id=1)) for _ in range(5)
        ]
        await asyncio.sleep(0)
        # Chat 1: a burst of 3 went, 2 wait their turn, at one a second.
        assert api.times(1) == [0.0, 0.0, 0.0]
        assert clock.slept == [1.0, 2.0]
        # Meanwhile, nothing else waits: a button's answer, "typing" (in that chat too), and a
        # message in another chat reach Telegram at once.
        await asyncio.wait_for(api.call(limiter, "answerCallbackQuery", callback_query_id="q1"), 5)
        await asyncio.wait_for(api.call(limiter, "sendChatAction", chat_id=1), 5)
        await asyncio.wait_for(api.call(limiter, "sendChatAction", chat_id=2), 5)
        await asyncio.wait_for(api.call(limiter, "sendMessage", chat_id=2), 5)
        assert [m for m, _, _ in api.log[3:]] == [
            "answerCallbackQuery",
            "sendChatAction",
            "sendChatAction",
            "sendMessage",
        ]
        assert clock.slept == [1.0, 2.0]
        opened.set()
        await asyncio.gather(*queued)
        assert len(api.times(1)) == 5

    async def test_a_429_holds_back_its_chat_only(self) -> None:
        clock = FakeClock()
        opened = asyncio.Event()

        async def held(seconds: float) -> None:
            clock.slept.append(seconds)
            await opened.wait()

        limiter = TelegramLimiter(clock=clock, sleep=held)
        api = Api(clock)
        api.errors.append(RetryAfter(5))
        first = asyncio.create_task(api.call(limiter, "sendMessage", chat_id=1))
        await asyncio.sleep(0)
        assert clock.slept == [pytest.approx(5.1)]  # retry_after + 0.1, then tried again
        await asyncio.wait_for(api.call(limiter, "sendMessage", chat_id=2), 5)
        await asyncio.wait_for(api.call(limiter, "answerCallbackQuery", callback_query_id="q"), 5)
        # Chat 1 is held: its next message (and its edits) wait for the pause too.
        second = asyncio.create_task(api.call(limiter, "editMessageText", chat_id=1))
        await asyncio.sleep(0)
        assert clock.slept == [pytest.approx(5.1), pytest.approx(5.1)]
        opened.set()
        await asyncio.gather(first, second)
        assert [m for m, c, _ in api.log if c == 1] == ["sendMessage", "editMessageText"]

    async def test_a_429_on_a_call_to_no_chat_holds_back_every_call(self) -> None:
        clock = FakeClock()
        limiter = TelegramLimiter(clock=clock, sleep=clock.advancing)
        api = Api(clock)
        api.errors.append(RetryAfter(2))
        await api.call(limiter, "answerCallbackQuery", callback_query_id="q")
        assert clock.now == pytest.approx(2.1)
        await api.call(limiter, "sendMessage", chat_id=3)
        assert clock.slept == [pytest.approx(2.1)]
