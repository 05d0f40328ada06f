"""The update inbox (`domain.inbox`) and what makes a replayed update harmless: one row per
update id, unfinished ones in order, and a job creation that finds the job its update made."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from telegram import Update

from bot.processor import PerUserUpdateProcessor
from core.settings import LimitsSettings
from db.base import utcnow
from db.models import Job, Photo, PhotoKind
from db.session import Database
from domain import inbox, jobs
from tests.utils.factories import make_style, make_user


def message(update_id: int, user_id: int = 42) -> dict[str, Any]:
    user = {"id": user_id, "is_bot": False, "first_name": "U"}
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "date": 0,
            "chat": {"id": user_id, "type": "private"},
            "from": user,
            "text": "hi",
        },
    }


class TestInbox:
    def test_an_update_is_stored_once(self, session: Session) -> None:
        assert inbox.store(session, 7, message(7))
        assert not inbox.store(session, 7, message(7))
        assert inbox.unfinished(session) == [message(7)]

    def test_unfinished_in_update_order_until_finished(self, session: Session) -> None:
        for n in (12, 10, 11):
            inbox.store(session, n, message(n))
        inbox.finish(session, 11)
        assert [u["update_id"] for u in inbox.unfinished(session)] == [10, 12]
        assert inbox.is_done(session, 11)
        assert not inbox.is_done(session, 10)
        assert not inbox.is_done(session, 99)  # never stored
        inbox.finish(session, 99)  # a no-op

    def test_handled_updates_are_purged_after_a_day(self, session: Session) -> None:
        inbox.store(session, 20, message(20))
        inbox.store(session, 21, message(21))
        inbox.finish(session, 20)
        assert inbox.purge(session, utcnow() + timedelta(hours=1)) == 0
        assert inbox.purge(session, utcnow() + inbox.KEEP_DONE + timedelta(minutes=1)) == 1
        assert [u["update_id"] for u in inbox.unfinished(session)] == [21]


def test_a_replayed_update_finds_the_job_it_created(session: Session) -> None:
    """The bot died after the job was committed but before the update was marked done: the
    replay gets the same job back (not a second one, not "a job is already running")."""
    user = make_user(session, 5501)
    session.add(
        Photo(
            user_id=user.id,
            kind=PhotoKind.SELFIE,
            sha256=f"{user.id:064x}",
            size_bytes=1,
            width=512,
            height=512,
            faces=[{"box": [0, 0, 100, 100], "score": 0.99}],
            selected_face=0,
        )
    )
    style_id = make_style(session, slug="replay").id
    session.flush()

    def create() -> jobs.CreatedJob:
        return jobs.create_portrait_job(
            session,
            user.id,
            style_id=style_id,
            chat_id=user.telegram_id,
            limits=LimitsSettings(daily_quota=1, active_jobs_per_user=1),
            is_admin=False,
            num_images=1,
            update_id=777,
        )

    first = create()
    jobs.release_job(session, first.job_id, status_message_id=31)
    again = create()
    assert again.job_id == first.job_id
    assert again.replayed
    assert again.status_message_id == 31
    assert not first.replayed
    assert session.scalar(select(func.count(Job.id))) == 1


@pytest.fixture
def processor(committed_db: Database) -> PerUserUpdateProcessor:
    return PerUserUpdateProcessor(8, db=committed_db)


async def test_the_processor_handles_an_update_once_and_marks_it_done(
    committed_db: Database, processor: PerUserUpdateProcessor
) -> None:
    ran: list[int] = []

    async def handler(n: int) -> None:
        ran.append(n)

    for n in (1, 2):
        committed_db.call(inbox.store, n, message(n))
    committed_db.call(inbox.finish, 1)  # handled before the bot died
    for n in (1, 2, 2):
        await processor.process_update(Update.de_json(message(n), None), handler(n))
    assert ran == [2]
    assert committed_db.call(inbox.unfinished) == []


async def test_a_copy_queued_twice_runs_once(
    committed_db: Database, processor: PerUserUpdateProcessor
) -> None:
    """A replayed update and the same one polled again, both queued in this process."""
    ran: list[int] = []
    gate = asyncio.Event()

    async def handler(n: int) -> None:
        await gate.wait()
        ran.append(n)

    committed_db.call(inbox.store, 3, message(3))
    first = asyncio.create_task(
        processor.process_update(Update.de_json(message(3), None), handler(3))
    )
    await asyncio.sleep(0.1)
    await processor.process_update(Update.de_json(message(3), None), handler(3))
    gate.set()
    await first
    assert ran == [3]


def test_a_batch_is_stored_in_one_go_and_copies_are_left_out(session: Session) -> None:
    """What one getUpdates returned: the new ones in order; a copy stored before, or twice in
    the batch, is not stored again."""
    assert inbox.store(session, 20, message(20))
    batch = [(21, message(21)), (20, message(20)), (22, message(22)), (21, message(21))]
    assert inbox.store_batch(session, batch) == [21, 22]
    assert inbox.store_batch(session, batch) == []
    assert [u["update_id"] for u in inbox.unfinished(session)] == [20, 21, 22]


async def test_a_batch_accepted_is_handled_without_reading_the_inbox_again(
    committed_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row this process has just inserted cannot be done: its handling skips the is-done
    read (one transaction less per update); a copy still reads it."""
    from telegram.ext import ApplicationBuilder

    from bot.polling import accept_batch

    processor = PerUserUpdateProcessor(8, db=committed_db)
    application = (
        ApplicationBuilder()
        .token("123456:TEST")
        .updater(None)
        .concurrent_updates(processor)
        .build()
    )
    assert await accept_batch(application, committed_db, [message(31), {"nonsense": 1}]) == 1
    assert await accept_batch(application, committed_db, [message(31)]) == 0
    assert processor.fresh == {31}
    update = application.update_queue.get_nowait()
    assert application.update_queue.empty()

    def no_read(session: Session, update_id: int) -> bool:
        raise AssertionError("the inbox was read for a fresh update")

    monkeypatch.setattr(inbox, "is_done", no_read)
    ran: list[int] = []

    async def handler() -> None:
        ran.append(update.update_id)

    await processor.process_update(update, handler())
    assert ran == [31]
    assert processor.fresh == set()
    assert committed_db.call(inbox.unfinished) == []
