"""Chat flood schedules shared by every process that sends to Telegram, kept in Redis.

The bot's replies, the io workers' deliveries and the Mini App's status messages reach the same
chats: their per-chat (and per-group) limits must be counted together. With a Redis broker
(`BROKER_URL=redis://...`) each message books its chat's next send slot in Redis with one
Lua script (EVALSHA, one round trip), applying the same rules as `telegram_ui.flood`: the token
bucket with bursts for a private chat, 20 in any 60 s for a group, a 429's pause. The caller then
sleeps until its slot: bookings are first come, first served and nobody polls. Every key has a
TTL, so idle chats leave nothing behind.

Times in Redis are wall-clock microseconds (`time.time`, NTP-synchronised hosts); the caller
speaks in delays from now, so its own clock (monotonic) never meets another host's.

Redis out of reach (or answering with an error) never holds a message back: `book` answers
None after one short try (the caller falls back to its own in-memory schedule), the outage is
logged once, and Redis is tried again `RETRY_SECONDS` later."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from telegram_ui.flood import (
    GROUP_MESSAGES,
    GROUP_PERIOD_SECONDS,
    PRIVATE_CHAT_BURST,
    PRIVATE_CHAT_PER_SECOND,
    is_group_chat,
)

logger = logging.getLogger(__name__)

# Broker URL schemes that name a Redis server (Celery's and redis-py's spellings).
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
# How long to wait for Redis before sending on the in-memory schedule.
TIMEOUT_SECONDS = 0.5
# After Redis failed, the in-memory schedule is used this long before Redis is tried again.
RETRY_SECONDS = 10.0
# Connections to Redis per process (bookings beyond these wait for one).
MAX_CONNECTIONS = 8
# Extra life of a key after its last booking matters (seconds).
KEY_GRACE_SECONDS = 1.0
_US = 1_000_000

# KEYS[1]: the chat's schedule (private: its theoretical arrival time, the "tat" of
# flood.TokenBucket; group: a list of its last GROUP_MESSAGES booked times), KEYS[2]: its pause.
# ARGV: op ("book" | "pause"), now, at (book: not before; pause: until), kind ("p" | "g"),
# then for "p" interval and tolerance, for "g" limit and period. Times in microseconds.
# Returns the booked time (book) or the pause (pause).
_SCRIPT = """
local op, now, at, kind = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local a, b, grace = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local function ttl(until_us)
  return math.max(1, math.ceil((until_us - now) / 1000)) + grace
end
local function fmt(x) return string.format('%.0f', x) end
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if op == 'pause' then
  if at > paused then
    paused = at
    redis.call('SET', KEYS[2], fmt(paused), 'PX', ttl(paused))
  end
  if kind == 'p' then
    local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
    if paused + b > tat then
      redis.call('SET', KEYS[1], fmt(paused + b), 'PX', ttl(paused + b))
    end
  end
  return paused
end
at = math.max(at, now, paused)
if kind == 'p' then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  at = math.max(at, tat - b)
  tat = math.max(tat, at) + a
  redis.call('SET', KEYS[1], fmt(tat), 'PX', ttl(tat))
else
  local n = redis.call('LLEN', KEYS[1])
  if n > 0 then
    at = math.max(at, tonumber(redis.call('LINDEX', KEYS[1], -1)))
    if n >= a then
      at = math.max(at, tonumber(redis.call('LINDEX', KEYS[1], -a)) + b)
    end
  end
  redis.call('RPUSH', KEYS[1], fmt(at))
  redis.call('LTRIM', KEYS[1], -a, -1)
  redis.call('PEXPIRE', KEYS[1], ttl(at + b))
end
return at
"""


def shared_flood_url(broker_url: str | None) -> str | None:
    """The Redis to share chat schedules through: the broker's, when it is Redis (None for
    the embedded SQLite transport or another broker: schedules stay per process)."""
    if broker_url and broker_url.startswith(REDIS_SCHEMES):
        return broker_url
    return None


class SharedSchedules:
    """Per-chat flood schedules in Redis (module docstring). Used from one event loop."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "",
        clock: Callable[[], float] = time.time,
        timeout: float = TIMEOUT_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self.url = url
        self.prefix = f"facechain:flood:{namespace}:" if namespace else "facechain:flood:"
        self.clock = clock
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self._client: aioredis.Redis | None = None
        self._script: Any = None
        # While Redis is out of reach: the monotonic time to try it again.
        self._down_until: float | None = None

    def _key(self, chat_id: object) -> list[str]:
        key = f"{self.prefix}{{{chat_id}}}"  # a hash tag: both keys in one cluster slot
        return [key, key + ":pause"]

    @staticmethod
    def _rule(chat_id: object) -> list[str]:
        if is_group_chat(chat_id):
            return ["g", str(GROUP_MESSAGES), str(round(GROUP_PERIOD_SECONDS * _US))]
        interval = 1.0 / PRIVATE_CHAT_PER_SECOND
        tolerance = (max(1, PRIVATE_CHAT_BURST) - 1) * interval
        return ["p", str(round(interval * _US)), str(round(tolerance * _US))]

    async def book(self, chat_id: object, not_before: float) -> float | None:
        """Book the chat's next message, no earlier than `not_before` seconds from now.

        Returns the seconds from now until its slot, or None when Redis cannot be reached
        (nothing was booked: the caller uses its own schedule)."""
        return await self._run("book", chat_id, not_before)

    async def pause(self, chat_id: object, seconds: float) -> None:
        """Hold the chat's messages back for `seconds` (Telegram answered 429), for every
        process."""
        await self._run("pause", chat_id, seconds)

    async def _run(self, op: str, chat_id: object, delay: float) -> float | None:
        if self._down_until is not None and time.monotonic() < self._down_until:
            return None
        now = self.clock()
        now_us = round(now * _US)
        at_us = now_us + round(max(0.0, delay) * _US)
        grace_ms = str(round(KEY_GRACE_SECONDS * 1000))
        try:
            script = self._ensure_script()
            result = await script(
                keys=self._key(chat_id),
                args=[op, str(now_us), str(at_us), *self._rule(chat_id), grace_ms],
            )
        except (RedisError, OSError) as exc:
            # Out of reach, too slow, or refusing (a wrong db, out of memory, read-only): the
            # message goes on this process's own schedule rather than waiting or failing.
            if self._down_until is None:
                logger.warning(
                    "Redis (%s) is out of reach for the shared flood limits: each process "
                    "keeps its own until it is back (%s)",
                    self.url.split("@")[-1],
                    exc,
                )
            self._down_until = time.monotonic() + self.retry_seconds
            await self._drop_client()
            return None
        if self._down_until is not None:
            logger.info("Redis is back: flood limits are shared again")
            self._down_until = None
        return max(0.0, int(result) / _US - now)

    def _ensure_script(self) -> Any:
        if self._client is None:
            # A few connections, waited for when all are busy: a burst of bookings queues for
            # them (0.2 ms each) instead of opening one connection per waiting message.
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=MAX_CONNECTIONS,
                timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                socket_timeout=self.timeout,
            )
            self._client = aioredis.Redis(connection_pool=pool)
            # EVALSHA, loading the script again if the server lost it (a restart).
            self._script = self._client.register_script(_SCRIPT)
        return self._script

    async def _drop_client(self) -> None:
        client, self._client, self._script = self._client, None, None
        if client is not None:
            try:
                await client.aclose()
            except Exception:  # closing a broken connection: nothing to save
                logger.debug("closing the flood Redis client failed", exc_info=True)

    async def close(self) -> None:
        """Close the connection (the limiter's shutdown)."""
        await self._drop_client()
