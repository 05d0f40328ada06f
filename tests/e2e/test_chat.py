"""End to end: the real bot (long polling against the fake Bot API server), real Celery workers on
the tiny profile, PostgreSQL and Redis. What a person does in the chat, all the way to the album:
selfie and style, a template with face choice, cancel, /forget, two users at once, and a bot
restarted mid-conversation."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import signal
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import text as sql

from db.models import JobKind, JobStatus
from tests.utils.chat import (
    JOB_SECONDS,
    prefix,
    press,
    send_selfie,
    status_message,
    text,
    use_style,
)
from tests.utils.fake_telegram import FakeTelegram, FakeUser, buttons
from tests.utils.stack import Stack, child_pids, face

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]


async def album_of(stack: Stack, user: FakeUser) -> list[bytes]:
    """Wait for the user's one album; the uploaded image bytes."""
    await stack.wait(lambda: stack.albums(user.id), JOB_SECONDS, f"album for {user.id}")
    [album] = stack.albums(user.id)
    return [album.files[item["media"].removeprefix("attach://")] for item in album.params["media"]]


async def delivered(stack: Stack, job_id: int) -> None:
    """Until the job is marked delivered."""
    await stack.wait(
        lambda: stack.job(job_id).delivered_at is not None, 60, f"job {job_id} delivered"
    )


class TestPortrait:
    async def test_start_selfie_style_album(self, stack: Stack) -> None:
        tg = stack.tg
        ann = tg.user(810001, "Ann", "en")
        tg.send_text(ann, "/start")
        await tg.wait_text(ann.id, text(ann, "start.welcome", name="Ann"))

        picker = await send_selfie(tg, ann, "man_pose1.png")
        assert "Armor" in picker["caption"]
        since = await press(tg, ann, picker, "▶")
        await tg.wait_for("editMessageMedia", since=since, chat_id=ann.id)
        assert "Autumn" in tg.current(picker)["caption"]

        await use_style(tg, ann, picker)
        images = await album_of(stack, ann)
        await tg.wait_text(ann.id, text(ann, "job.done", count=2), within=30)
        follow_up = await tg.wait_text(ann.id, text(ann, "job.next"), within=30)
        labels = [
            b["text"] for row in follow_up.params["reply_markup"]["inline_keyboard"] for b in row
        ]
        assert text(ann, "btn.more_like_this") in labels

        [job] = stack.jobs_of(ann.id)
        await delivered(stack, job.id)
        job = stack.job(job.id)
        assert job.kind is JobKind.PORTRAIT
        assert job.style_id == stack.style_ids[1]
        assert job.attempts == 1
        assert job.error_code is None
        [photo] = stack.photos_of(ann.id)
        assert job.params["photo_ids"] == [photo.id]
        # What the user got is exactly what the worker stored, content-addressed.
        assert sorted(hashlib.sha256(b).hexdigest() for b in images) == sorted(job.result_blobs)
        for data in images:
            assert Image.open(io.BytesIO(data)).size == (64, 64)


class TestTemplate:
    async def test_own_group_photo_with_face_choice(self, stack: Stack) -> None:
        tg = stack.tg
        bob = tg.user(810002, "Bob", "en")
        await send_selfie(tg, bob, "woman_pose1.png")
        tg.send_text(bob, "/template")
        await tg.wait_text(bob.id, text(bob, "template.send_own"))

        since = len(tg.calls)
        tg.send_photo(bob, face("template_group.jpg"), width=1680, height=1260)
        await tg.wait_text(bob.id, text(bob, "template.choose_faces", count=2), since=since)
        preview = [m for m in tg.bot_messages(bob.id) if m.get("photo")][-1]
        assert [label for label, _ in buttons(preview)][:2] == ["1", "2"]
        since = await press(tg, bob, preview, "2")
        await tg.wait_for("editMessageReplyMarkup", since=since, chat_id=bob.id)
        since = await press(tg, bob, preview, text(bob, "btn.start_template"))
        await tg.wait_text(bob.id, prefix(bob, "job.queued"), since=since)

        await stack.wait(
            lambda: stack.results(bob.id, "sendDocument"), JOB_SECONDS, "template result"
        )
        [document] = stack.results(bob.id, "sendDocument")
        full = Image.open(io.BytesIO(next(iter(document.files.values()))))
        assert full.size == (1680, 1260)
        assert [c for c in stack.results(bob.id, "sendPhoto") if c.at >= document.at - 60]
        [job] = stack.jobs_of(bob.id)
        await delivered(stack, job.id)
        job = stack.job(job.id)
        assert job.kind is JobKind.TEMPLATE
        assert job.params["faces"] == [2]
        assert job.params["template_photo_id"] is not None
        assert job.result_meta["size"] == [1680, 1260]


def _no_open_transactions(stack: Stack) -> bool:
    """Whether no other connection sits inside a transaction (a stopped worker holds no lock)."""
    if stack.db.engine.dialect.name != "postgresql":
        return True
    with stack.db.engine.connect() as conn:
        busy = conn.execute(
            sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction')"
            )
        ).scalar_one()
    return int(busy) == 0


async def freeze_gpu_child(stack: Stack) -> int:
    """SIGSTOP the process running the gpu worker's tasks between two transactions (the worker
    itself: gpu workers run their tasks in-process, `tasks.warm`; a pool child if it has one);
    returns its pid."""
    worker = stack.workers["gpu"].proc.pid
    [child] = child_pids(worker) or [worker]
    for _ in range(100):
        os.kill(child, signal.SIGSTOP)
        if _no_open_transactions(stack):
            return child
        os.kill(child, signal.SIGCONT)
        await asyncio.sleep(0.02)
    raise AssertionError("the gpu worker never left its transaction")


class TestCancel:
    async def test_cancel_a_queued_and_a_running_job(self, stack: Stack) -> None:
        tg = stack.tg
        cat = tg.user(810003, "Cat", "en")
        dan = tg.user(810004, "Dan", "ru")
        picker_cat = await send_selfie(tg, cat, "man_pose3.png")
        picker_dan = await send_selfie(tg, dan, "woman_pose2.png")

        announced = await use_style(tg, cat, picker_cat)
        [running] = stack.jobs_of(cat.id)
        await stack.wait(
            lambda: stack.job(running.id).status is JobStatus.RUNNING, JOB_SECONDS, "running"
        )
        # Hold the generation still, so "running" and "queued" are facts, not a race.
        child = await freeze_gpu_child(stack)
        try:
            queued_call = await use_style(tg, dan, picker_dan)
            [queued] = stack.jobs_of(dan.id)
            since = await press(
                tg, dan, status_message(tg, dan, queued_call), text(dan, "btn.cancel")
            )
            await tg.wait_text(dan.id, text(dan, "job.cancelled"), since=since)
            assert stack.job(queued.id).status is JobStatus.CANCELLED

            since = await press(
                tg, cat, status_message(tg, cat, announced), text(cat, "btn.cancel")
            )
            await tg.wait_text(cat.id, text(cat, "job.cancelling"), since=since)
            assert stack.job(running.id).cancel_requested
        finally:
            os.kill(child, signal.SIGCONT)

        await stack.wait(
            lambda: stack.job(running.id).status is JobStatus.CANCELLED, 60, "running job stops"
        )
        # It ran: the notice says it counts (its free slot stays used).
        await tg.wait_text(cat.id, text(cat, "job.cancelled_after_start"), since=since, within=60)
        # The cancelled queued job's message still reaches the worker, which leaves it alone.
        gpu = stack.workers["gpu"]
        await stack.wait(
            lambda: f"job {queued.id} already cancelled" in gpu.log(), 60, "queued job skipped"
        )
        assert stack.job(queued.id).attempts == 0
        assert not stack.albums(cat.id)
        assert not stack.albums(dan.id)


class TestForget:
    async def test_forget_removes_rows_and_blobs(self, stack: Stack) -> None:
        tg = stack.tg
        eve = tg.user(810005, "Eve", "zh")
        picker = await send_selfie(tg, eve, "man_pose2.png")
        await use_style(tg, eve, picker)
        await album_of(stack, eve)
        [job] = stack.jobs_of(eve.id)
        await delivered(stack, job.id)
        keys = [p.sha256 for p in stack.photos_of(eve.id)] + list(stack.job(job.id).result_blobs)
        assert len(keys) == 3
        assert all(stack.blobs.exists(k) for k in keys)

        since = len(tg.calls)
        tg.send_text(eve, "/forget")
        await tg.wait_text(eve.id, text(eve, "forget.confirm"), since=since)
        confirm = tg.bot_messages(eve.id)[-1]
        since = await press(tg, eve, confirm, text(eve, "btn.forget_yes"))
        done = text(
            eve,
            "forget.done",
            photos=text(eve, "forget.photos", count=1),
            jobs=text(eve, "forget.jobs", count=1),
        )
        await tg.wait_text(eve.id, done, since=since)

        assert stack.photos_of(eve.id) == []
        assert stack.jobs_of(eve.id) == []
        assert not [k for k in keys if stack.blobs.exists(k)]
        user = stack.user(eve.id)
        assert user is not None
        assert user.first_name is None
        assert user.username is None


class TestConcurrency:
    async def test_two_users_at_once_do_not_block_each_other(self, stack: Stack) -> None:
        tg = stack.tg
        fay = tg.user(810006, "Fay", "en")
        gus = tg.user(810007, "Gus", "en")
        # Fay's selfie (download, decode, face detection, quality) and Gus's /start arrive in
        # one batch: Gus is answered without waiting for Fay's check.
        since = len(tg.calls)
        tg.send_photo(fay, face("woman_pose3.png"))
        tg.send_text(gus, "/start")
        greeting = await tg.wait_text(gus.id, prefix(gus, "start.welcome"), since=since)
        saved = await tg.wait_text(fay.id, prefix(fay, "selfie.saved"), since=since, within=60)
        assert greeting.at <= saved.at
        await tg.wait_for("sendPhoto", chat_id=fay.id, since=since, within=30)

        async def flow(user: FakeUser, selfie: str | None) -> list[bytes]:
            picker = await send_selfie(tg, user, selfie) if selfie else _picker(tg, user)
            await use_style(tg, user, picker)
            return await album_of(stack, user)

        fay_album, gus_album = await asyncio.gather(flow(fay, None), flow(gus, "man_pose1.png"))
        assert len(fay_album) == len(gus_album) == 2
        assert len(stack.albums(fay.id)) == len(stack.albums(gus.id)) == 1
        assert len(stack.jobs_of(fay.id)) == len(stack.jobs_of(gus.id)) == 1


def _picker(tg: FakeTelegram, user: FakeUser) -> dict[str, Any]:
    """The style picker the bot already sent to this user."""
    return [m for m in tg.bot_messages(user.id) if m.get("photo")][-1]


class TestRestart:
    async def test_bot_restarted_between_selfie_and_style(self, stack: Stack) -> None:
        tg = stack.tg
        hal = tg.user(810008, "Hal", "en")
        ivy = tg.user(810009, "Ivy", "en")
        # Hal: a selfie before the restart, the style after it.
        picker = await send_selfie(tg, hal, "woman_pose3.png")
        [selfie] = stack.photos_of(hal.id)
        # Ivy: the style before the restart, the selfie after it.
        since = len(tg.calls)
        tg.send_text(ivy, "/style")
        await tg.wait_for("sendPhoto", chat_id=ivy.id, since=since)
        since = await press(tg, ivy, _picker(tg, ivy), text(ivy, "btn.use_style"))
        await tg.wait_text(ivy.id, text(ivy, "styles.send_selfie_first"), since=since)
        await tg.idle()

        await stack.restart_bot()

        await use_style(tg, hal, picker)
        since = len(tg.calls)
        tg.send_photo(ivy, face("man_pose3.png"))
        await tg.wait_text(ivy.id, prefix(ivy, "job.queued"), since=since, within=60)
        await album_of(stack, hal)
        await album_of(stack, ivy)
        [hal_job] = stack.jobs_of(hal.id)
        [ivy_job] = stack.jobs_of(ivy.id)
        assert hal_job.params["photo_ids"] == [selfie.id]
        assert hal_job.style_id == ivy_job.style_id == stack.style_ids[0]


class TestHd:
    async def test_album_then_hd_2_sends_a_4x_document(self, stack: Stack) -> None:
        tg = stack.tg
        kim = tg.user(810010, "Kim", "ru")
        picker = await send_selfie(tg, kim, "woman_pose1.png")
        await use_style(tg, kim, picker)
        album = await album_of(stack, kim)
        follow_up = await tg.wait_text(kim.id, text(kim, "job.next"), within=30)
        hd_buttons = [label for label, data in buttons(follow_up.params) if data.startswith("hd:")]
        assert hd_buttons == [text(kim, "btn.hd", n=1), text(kim, "btn.hd", n=2)]
        [portraits] = stack.jobs_of(kim.id)
        await delivered(stack, portraits.id)

        message = [m for m in tg.bot_messages(kim.id) if m.get("text") == text(kim, "job.next")][
            -1
        ]
        since = await press(tg, kim, message, text(kim, "btn.hd", n=2))
        await tg.wait_text(kim.id, prefix(kim, "job.queued"), since=since)
        sent = await tg.wait_for("sendDocument", chat_id=kim.id, since=since, within=JOB_SECONDS)

        # The bytes the Bot API received: a PNG four times the portrait, of portrait 2.
        [data] = sent.files.values()
        hd = Image.open(io.BytesIO(data))
        assert hd.format == "PNG"
        small = Image.open(io.BytesIO(album[1]))
        assert hd.size == (small.width * 4, small.height * 4) == (256, 256)
        assert sent.params["filename"] == f"portrait-{portraits.id}-2-256.png"
        assert sent.params["caption"] == text(kim, "hd.caption", n=2, width=256, height=256)
        await tg.wait_text(kim.id, text(kim, "hd.done"), since=since, within=30)

        [_, upscale] = stack.jobs_of(kim.id)
        await delivered(stack, upscale.id)
        upscale = stack.job(upscale.id)
        assert upscale.kind is JobKind.UPSCALE
        assert upscale.params["source_job_id"] == portraits.id
        assert upscale.params["index"] == 1
        assert upscale.result_blobs == [hashlib.sha256(data).hexdigest()]
        # Portrait 2 of the album went in: the stored source is the second result.
        source = stack.job(portraits.id).result_blobs[1]
        assert hashlib.sha256(album[1]).hexdigest() == source
