"""Broadcasts: throttled sending, RetryAfter, unreachable chats, resume after a crash, cancel."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from telegram.error import BadRequest, Forbidden, RetryAfter, TimedOut

from core.blobstore import LocalBlobStore
from core.errors import IllegalTransition, ValidationFailed
from db.base import utcnow
from db.models import AuditEntry, Broadcast, User, WebhookDelivery, WebhookEndpoint
from db.session import Database
from domain.broadcasts import STALE_SENDER_SECONDS, cancel_broadcast, create_broadcast, progress
from domain.privacy import forget_user
from domain.users import touch
from tasks.broadcast import RATE_PER_SECOND, resend_stalled_broadcasts, run_broadcast
from tasks.dispatch import CeleryPublisher


@dataclass
class FakeClock:
    """Monotonic time that only moves when the sender sleeps (or a send takes time)."""

    now: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Crash(Exception):
    """Stands in for a worker dying mid-broadcast."""


@dataclass
class FakeBot:
    """Records sends with their time; scripted failures per chat id."""

    clock: FakeClock
    failures: dict[int, list[Exception]] = field(default_factory=dict)
    sent: list[tuple[int, float]] = field(default_factory=list)
    crash_after: int | None = None

    async def send_message(self, chat_id: int, text: str) -> Any:
        if self.crash_after is not None and len(self.sent) >= self.crash_after:
            raise Crash
        script = self.failures.get(chat_id)
        if script:
            raise script.pop(0)
        self.sent.append((chat_id, self.clock.now))
        return None


def add_users(session: Session, telegram_ids: list[int], banned: set[int] | None = None) -> None:
    for tid in telegram_ids:
        session.add(User(telegram_id=tid, is_banned=tid in (banned or set())))
    session.flush()


def new_broadcast(db: Database, users: list[int], banned: set[int] | None = None) -> int:
    def run(session: Session) -> int:
        add_users(session, users, banned)
        return create_broadcast(session, "  Hello everyone  ", "api").id

    return db.call(run)


def age_progress(db: Database, broadcast_id: int, seconds: float) -> None:
    """Pretend the broadcast's last saved progress is `seconds` old."""

    def run(session: Session) -> None:
        session.execute(
            update(Broadcast)
            .where(Broadcast.id == broadcast_id)
            .values(updated_at=utcnow() - timedelta(seconds=seconds))
        )

    db.call(run)


def load(db: Database, broadcast_id: int) -> Broadcast:
    row = db.call(lambda s: s.get(Broadcast, broadcast_id))
    assert row is not None
    return row


class TestCreate:
    def test_counts_unbanned_recipients_and_audits(self, session: Session) -> None:
        add_users(session, [1, 2, 3], banned={2})
        broadcast = create_broadcast(session, " hi ", "tg:99")
        assert broadcast.text == "hi"
        assert broadcast.status == "queued"
        assert broadcast.total == 2
        entry = session.scalar(select(AuditEntry).where(AuditEntry.action == "broadcast.create"))
        assert entry is not None
        assert entry.actor == "tg:99"
        assert entry.target == f"broadcast:{broadcast.id}"
        assert progress(broadcast)["progress"] == 0.0

    @pytest.mark.parametrize("text", ["", "   ", "x" * 4097])
    def test_rejects_empty_or_long_text(self, session: Session, text: str) -> None:
        with pytest.raises(ValidationFailed):
            create_broadcast(session, text, "api")


class TestRun:
    async def test_sends_to_everyone_throttled(self, db: Database) -> None:
        bid = new_broadcast(db, list(range(100, 160)), banned={105})
        clock = FakeClock()
        bot = FakeBot(clock)
        status = await run_broadcast(db, bot, bid, clock=clock, sleep=clock.sleep, batch_size=7)
        assert status == "done"
        assert [c for c, _ in bot.sent] == [t for t in range(100, 160) if t != 105]
        times = [t for _, t in bot.sent]
        # No window of one second holds more than RATE_PER_SECOND sends.
        for i in range(len(times) - int(RATE_PER_SECOND)):
            assert times[i + int(RATE_PER_SECOND)] - times[i] >= 1.0 - 1e-9
        row = load(db, bid)
        assert (row.status, row.sent, row.failed) == ("done", 59, 0)
        assert row.finished_at is not None
        assert progress(row)["progress"] == 1.0

    async def test_retry_after_is_honoured_and_unreachable_chats_count_failed(
        self, db: Database
    ) -> None:
        bid = new_broadcast(db, [1, 2, 3, 4])
        clock = FakeClock()
        bot = FakeBot(
            clock,
            failures={
                2: [RetryAfter(7)],
                3: [Forbidden("bot was blocked by the user")],
                4: [TimedOut(), BadRequest("chat not found")],
            },
        )
        status = await run_broadcast(db, bot, bid, clock=clock, sleep=clock.sleep)
        assert status == "done"
        assert [c for c, _ in bot.sent] == [1, 2]
        assert 7 in clock.sleeps
        row = load(db, bid)
        assert (row.sent, row.failed) == (2, 2)

    async def test_retry_after_as_timedelta(self, db: Database) -> None:
        bid = new_broadcast(db, [1])
        clock = FakeClock()
        bot = FakeBot(clock, failures={1: [RetryAfter(timedelta(seconds=3))]})
        await run_broadcast(db, bot, bid, clock=clock, sleep=clock.sleep)
        assert 3.0 in clock.sleeps
        assert load(db, bid).sent == 1

    async def test_resumes_after_crash_without_duplicates(self, db: Database) -> None:
        bid = new_broadcast(db, list(range(1, 11)))
        clock = FakeClock()
        first = FakeBot(clock, crash_after=4)
        with pytest.raises(Crash):
            await run_broadcast(db, first, bid, clock=clock, sleep=clock.sleep)
        row = load(db, bid)
        assert (row.status, row.sent) == ("sending", 4)
        # A redelivered copy while the sender may still be alive leaves it alone...
        second = FakeBot(clock)
        assert await run_broadcast(db, second, bid, clock=clock, sleep=clock.sleep) == "busy"
        assert second.sent == []
        # ...and takes over once the sender has been silent for too long.
        age_progress(db, bid, STALE_SENDER_SECONDS + 1)
        assert await run_broadcast(db, second, bid, clock=clock, sleep=clock.sleep) == "done"
        assert [c for c, _ in first.sent] + [c for c, _ in second.sent] == list(range(1, 11))
        assert load(db, bid).sent == 10

    def test_stalled_queued_broadcasts_are_republished(self, db: Database) -> None:
        bid = new_broadcast(db, [1])
        celery = mock.create_autospec(Celery, instance=True)
        assert resend_stalled_broadcasts(celery, db, timedelta(minutes=5)) == 0
        age_progress(db, bid, 600)
        assert resend_stalled_broadcasts(celery, db, timedelta(minutes=5)) == 1
        celery.send_task.assert_called_once_with("broadcast.send", args=[bid], queue="io")

    async def test_budget_returns_more_and_continues(self, db: Database) -> None:
        bid = new_broadcast(db, list(range(1, 51)))
        clock = FakeClock()
        bot = FakeBot(clock)
        status = await run_broadcast(
            db, bot, bid, clock=clock, sleep=clock.sleep, budget_seconds=1.0
        )
        assert status == "more"
        partial = load(db, bid).sent
        assert 0 < partial < 50
        assert await run_broadcast(db, bot, bid, clock=clock, sleep=clock.sleep) == "done"
        assert [c for c, _ in bot.sent] == list(range(1, 51))

    async def test_cancel_stops_sending(self, db: Database) -> None:
        bid = new_broadcast(db, list(range(1, 20)))
        clock = FakeClock()

        class CancellingBot(FakeBot):
            async def send_message(self, chat_id: int, text: str) -> Any:
                await super().send_message(chat_id, text)
                if chat_id == 3:
                    db.call(cancel_broadcast, bid, "api")

        bot = CancellingBot(clock)
        assert await run_broadcast(db, bot, bid, clock=clock, sleep=clock.sleep) == "cancelled"
        assert [c for c, _ in bot.sent] == [1, 2, 3]
        row = load(db, bid)
        assert row.status == "cancelled"
        with pytest.raises(IllegalTransition):
            db.call(cancel_broadcast, bid, "api")
        # A finished broadcast is not sent again by a redelivered task.
        assert (
            await run_broadcast(db, FakeBot(clock), bid, clock=clock, sleep=clock.sleep)
            == "cancelled"
        )

    async def test_finish_emits_webhook_and_enqueues(self, db: Database) -> None:
        def endpoint(session: Session) -> None:
            session.add(
                WebhookEndpoint(
                    url="http://x.invalid/", secret="s" * 16, events=["broadcast.finished"]
                )
            )

        db.call(endpoint)
        bid = new_broadcast(db, [1, 2])
        clock = FakeClock()
        celery = mock.create_autospec(Celery, instance=True)
        publisher = CeleryPublisher(celery, db)
        await run_broadcast(
            db, FakeBot(clock), bid, publisher=publisher, clock=clock, sleep=clock.sleep
        )
        delivery = db.call(
            lambda s: s.scalar(
                select(WebhookDelivery).where(WebhookDelivery.event == "broadcast.finished")
            )
        )
        assert delivery is not None
        assert delivery.payload == {"broadcast_id": bid, "sent": 2, "failed": 0}
        celery.send_task.assert_called_once_with(
            "webhooks.deliver", args=[delivery.id], queue="io"
        )


class TestTask:
    def test_task_sends_with_a_bot_and_republishes_until_done(
        self, db: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from pydantic import SecretStr

        from core.settings import AppConfig, TelegramSettings
        from tasks import broadcast as module
        from tasks.context import set_context

        bid = new_broadcast(db, [1, 2, 3])
        bots: list[FakeBot] = []
        budgets: list[float] = []

        def call_telegram(fn: Any) -> Any:
            # The worker's one Bot (`WorkerContext.call_telegram`): the same for every run.
            if not bots:
                bots.append(FakeBot(FakeClock()))
            return asyncio.run(fn(bots[0]))

        statuses = iter(["more", "done"])

        async def fake_run(db_: Database, bot: Any, broadcast_id: int, **kw: Any) -> str:
            budgets.append(kw["budget_seconds"])
            await bot.send_message(chat_id=broadcast_id, text="x")
            return next(statuses)

        monkeypatch.setattr(module, "run_broadcast", fake_run)
        celery = mock.create_autospec(Celery, instance=True)
        config = AppConfig(telegram=TelegramSettings(token=SecretStr("123456:ABC")))
        set_context(mock.Mock(config=config, db=db, celery=celery, call_telegram=call_telegram))
        try:
            assert module.send_broadcast.run(bid) == "more"
            celery.send_task.assert_called_once_with("broadcast.send", args=[bid], queue="io")
            assert module.send_broadcast.run(bid) == "done"
            assert celery.send_task.call_count == 1
        finally:
            set_context(None)
        assert len(bots) == 1
        # Each run ends inside the io time limit, which Celery's threads pool does not enforce.
        assert budgets == [90.0, 90.0]
        assert max(budgets) < config.broker.io_time_limit


class TestForgottenUsers:
    async def test_a_forgotten_user_gets_none_until_they_write_again(
        self, db: Database, blobs: LocalBlobStore
    ) -> None:
        def forget_one(session: Session) -> int:
            add_users(session, [301, 302, 303])
            for user in session.scalars(select(User).where(User.telegram_id.in_([301, 302, 303]))):
                user.last_seen_at = utcnow()  # all three wrote to the bot before
            gone = session.scalar(select(User.id).where(User.telegram_id == 302))
            assert gone is not None
            forget_user(session, blobs, gone)
            return create_broadcast(session, "News", "api").id

        bid = db.call(forget_one)
        assert load(db, bid).total == 2
        clock = FakeClock()
        bot = FakeBot(clock)
        assert await run_broadcast(db, bot, bid, clock=clock, sleep=clock.sleep) == "done"
        assert [c for c, _ in bot.sent] == [301, 303]

        # Writing to the bot again makes them part of the audience again.
        db.call(touch, 302, None, "Ann", "en")
        again = db.call(lambda s: create_broadcast(s, "More news", "api").id)
        bot = FakeBot(clock)
        assert await run_broadcast(db, bot, again, clock=clock, sleep=clock.sleep) == "done"
        assert [c for c, _ in bot.sent] == [301, 302, 303]
