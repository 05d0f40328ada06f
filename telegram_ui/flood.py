"""Telegram's documented flood limits for what a bot sends, as schedules of send times.

Telegram's Bot FAQ ("My bot is hitting limits, how do I avoid this?"): in one chat, avoid more
than one message per second (short bursts are allowed); in a group, no more than 20 messages a
minute; bulk notifications to many users, about 30 messages per second. Answers to buttons,
chat actions ("typing") and edits are not messages and are not counted here.

Each limit is kept as a schedule: `earliest(now)` is the first moment the next message may go,
`commit(at)` books it. Booking happens before the caller waits, so every waiter knows its own
send time at once (first come, first served) and no waiter polls. `pause(until)` holds the
schedule back after Telegram answered 429 for it."""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol

# One message a second in a private chat, with bursts of up to this many.
PRIVATE_CHAT_PER_SECOND = 1.0
PRIVATE_CHAT_BURST = 3
# Groups, supergroups and channels: 20 messages in any minute.
GROUP_MESSAGES = 20
GROUP_PERIOD_SECONDS = 60.0
# Bulk (broadcasts, scheduled notices): TELEGRAM_BULK_MESSAGES_PER_SECOND defaults to this.
BULK_PER_SECOND = 30.0

# Bot API methods that post a new message in a chat (sendChatAction does not).
_MESSAGE_METHODS = frozenset({"forwardMessage", "forwardMessages", "copyMessage", "copyMessages"})


def posts_message(endpoint: str) -> bool:
    """Whether a Bot API method posts a message (counted by the flood limits)."""
    if endpoint == "sendChatAction":
        return False
    return endpoint.startswith("send") or endpoint in _MESSAGE_METHODS


def is_group_chat(chat_id: object) -> bool:
    """Negative ids are groups, supergroups and channels; an @username is a channel or
    supergroup. Positive ids are private chats."""
    if isinstance(chat_id, str):
        try:
            chat_id = int(chat_id)
        except ValueError:
            return True
    return isinstance(chat_id, int) and chat_id < 0


class Schedule(Protocol):
    """A limit on how often messages may go."""

    paused_until: float

    def earliest(self, now: float) -> float:
        """The first moment at or after `now` the next message may go."""
        ...

    def commit(self, at: float) -> None:
        """Book a message going at `at` (not before `earliest`)."""
        ...

    def pause(self, until: float) -> None:
        """Hold every message back until `until` (Telegram answered 429)."""
        ...

    def idle(self, now: float) -> bool:
        """Whether this schedule is back to its initial state (it can be forgotten)."""
        ...


class TokenBucket:
    """`burst` messages at once, then one every 1/rate seconds (the generic cell rate
    algorithm: `tat` is when the bucket would be full again)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.interval = 1.0 / rate
        self.tolerance = (max(1, burst) - 1) * self.interval
        self.tat = -math.inf
        self.paused_until = -math.inf

    def earliest(self, now: float) -> float:
        """See `Schedule.earliest`."""
        return max(now, self.tat - self.tolerance, self.paused_until)

    def commit(self, at: float) -> None:
        """See `Schedule.commit`."""
        self.tat = max(self.tat, at) + self.interval

    def pause(self, until: float) -> None:
        """Nothing goes before `until`; then one message every interval, no burst."""
        self.paused_until = max(self.paused_until, until)
        self.tat = max(self.tat, until + self.tolerance)

    def idle(self, now: float) -> bool:
        """See `Schedule.idle`."""
        return self.tat <= now and self.paused_until <= now


class SlidingWindow:
    """At most `limit` messages in any `period` seconds, in booking order."""

    def __init__(self, limit: int, period: float) -> None:
        self.period = period
        self.booked: deque[float] = deque(maxlen=limit)
        self.paused_until = -math.inf

    def earliest(self, now: float) -> float:
        """See `Schedule.earliest`."""
        at = max(now, self.paused_until)
        if self.booked:
            at = max(at, self.booked[-1])
            if len(self.booked) == self.booked.maxlen:
                at = max(at, self.booked[0] + self.period)
        return at

    def commit(self, at: float) -> None:
        """See `Schedule.commit`."""
        self.booked.append(at)

    def pause(self, until: float) -> None:
        """Nothing goes before `until`."""
        self.paused_until = max(self.paused_until, until)

    def idle(self, now: float) -> bool:
        """See `Schedule.idle`."""
        last = self.booked[-1] if self.booked else -math.inf
        return last + self.period <= now and self.paused_until <= now


def chat_schedule(chat_id: object) -> Schedule:
    """The schedule Telegram's limits give one chat."""
    if is_group_chat(chat_id):
        return SlidingWindow(GROUP_MESSAGES, GROUP_PERIOD_SECONDS)
    return TokenBucket(PRIVATE_CHAT_PER_SECOND, PRIVATE_CHAT_BURST)
