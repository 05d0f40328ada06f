"""Chat flood schedules shared through Redis: two limiters stand for two processes (the bot and
an io worker) sending to the same chats; their messages are counted together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
import redis
from telegram.error import RetryAfter

from core.settings import TelegramSettings
from telegram_ui.client import TelegramLimiter, make_limiter
from telegram_ui.flood_shared import SharedSchedules, shared_flood_url
from tests.telegram_ui.test_client import Api, FakeClock

# A Redis database no other test uses (flushed at the start of each test).
REDIS_URL = "redis://127.0.0.1:6379/13"
# Nothing listens there: Redis is down.
DOWN_URL = "redis://127.0.0.1:1/13"


def redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


needs_redis = pytest.mark.skipif(not redis_up(), reason="no Redis on 127.0.0.1:6379")


@pytest.fixture
async def processes() -> AsyncIterator[tuple[FakeClock, Api, TelegramLimiter, TelegramLimiter]]:
    """Two limiters booking in one Redis, on one fake clock (the wall clock they share)."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    clock = FakeClock()
    clock.now = 1_000.0
    bot, worker = (
        TelegramLimiter(
            clock=clock, sleep=clock.advancing, shared=SharedSchedules(REDIS_URL, clock=clock)
        )
        for _ in range(2)
    )
    yield clock, Api(clock), bot, worker
    await bot.shutdown()
    await worker.shutdown()


@needs_redis
class TestSharedSchedules:
    async def test_two_processes_messages_to_one_chat_are_spaced_together(
        self, processes: tuple[FakeClock, Api, TelegramLimiter, TelegramLimiter]
    ) -> None:
        clock, api, bot, worker = processes
        # The bot's reply, the worker's album and "what next?", the bot's next replies: one
        # burst of 3 between them, then one a second, whoever sends.
        for limiter in (bot, worker, worker, bot, worker, bot):
            await api.call(limiter, "sendMessage", chat_id=7)
        assert [t - 1_000.0 for t in api.times(7)] == [0.0, 0.0, 0.0, 1.0, 2.0, 3.0]
        # Another chat is not held back by chat 7.
        await api.call(worker, "sendPhoto", chat_id=8)
        assert api.times(8) == [clock.now]

    async def test_a_groups_21st_message_in_a_minute_waits(
        self, processes: tuple[FakeClock, Api, TelegramLimiter, TelegramLimiter]
    ) -> None:
        _, api, bot, worker = processes
        for n in range(21):
            await api.call(bot if n % 2 else worker, "sendMessage", chat_id=-1001)
        assert [t - 1_000.0 for t in api.times(-1001)] == [0.0] * 20 + [60.0]

    async def test_a_429_in_one_process_holds_the_chat_back_in_the_other(
        self, processes: tuple[FakeClock, Api, TelegramLimiter, TelegramLimiter]
    ) -> None:
        _, api, bot, worker = processes
        api.errors.append(RetryAfter(5))
        await api.call(bot, "sendMessage", chat_id=7)
        assert api.times(7) == [pytest.approx(1_005.1)]
        # The worker never got the 429, yet waits for the pause (and no burst after it).
        await api.call(worker, "sendMessage", chat_id=7)
        assert api.times(7)[1] >= 1_005.1

    async def test_a_burst_of_bookings_shares_a_few_connections(self) -> None:
        redis.Redis.from_url(REDIS_URL).flushdb()
        shared = SharedSchedules(REDIS_URL)
        try:
            # 500 chats' messages at once (a broadcast, a busy bot): all booked in Redis, none
            # falls back for want of a connection.
            delays = await asyncio.gather(*(shared.book(chat, 0.0) for chat in range(500)))
        finally:
            await shared.close()
        assert None not in delays
        assert max(d for d in delays if d is not None) < 0.5

    async def test_keys_expire(
        self, processes: tuple[FakeClock, Api, TelegramLimiter, TelegramLimiter]
    ) -> None:
        _, api, bot, _ = processes
        await api.call(bot, "sendMessage", chat_id=7)
        await api.call(bot, "sendMessage", chat_id=-5)
        client = redis.Redis.from_url(REDIS_URL)
        keys = client.keys("facechain:flood:*")
        assert len(keys) == 2
        assert all(0 < client.pttl(k) <= 61_000 for k in keys)


class TestRedisDown:
    async def test_sends_go_on_the_processs_own_schedule_logged_once(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        clock = FakeClock()
        limiter = TelegramLimiter(
            clock=clock, sleep=clock.advancing, shared=SharedSchedules(DOWN_URL, clock=clock)
        )
        api = Api(clock)
        with caplog.at_level(logging.WARNING, logger="telegram_ui.flood_shared"):
            for _ in range(6):
                await api.call(limiter, "sendMessage", chat_id=7)
        assert api.times(7) == [0.0, 0.0, 0.0, 1.0, 2.0, 3.0]
        assert len([r for r in caplog.records if "out of reach" in r.message]) == 1
        await limiter.shutdown()


@needs_redis
async def test_a_redis_that_answers_with_an_error_is_not_a_send_failure() -> None:
    clock = FakeClock()
    # Redis answers, but refuses the connection's database ("DB index is out of range").
    shared = SharedSchedules("redis://127.0.0.1:6379/99999", clock=clock)
    limiter = TelegramLimiter(clock=clock, sleep=clock.advancing, shared=shared)
    api = Api(clock)
    for _ in range(4):
        await api.call(limiter, "sendMessage", chat_id=7)
    assert api.times(7) == [0.0, 0.0, 0.0, 1.0]
    await limiter.shutdown()


class TestWiring:
    def test_only_a_redis_broker_shares_the_schedules(self) -> None:
        settings = TelegramSettings(token="123456:" + "A" * 35)
        assert shared_flood_url("sqla+sqlite:////data/broker.db") is None
        assert shared_flood_url("amqp://guest@localhost//") is None
        assert make_limiter(settings, "sqla+sqlite:////data/broker.db").shared is None
        shared = make_limiter(settings, REDIS_URL).shared
        assert shared is not None
        assert shared.url == REDIS_URL
        assert shared.prefix == "facechain:flood:123456:"
