"""The safety checker through the chat (the real bot on the fake Bot API; the gpu and io tasks
run here on the in-memory broker's messages, the engine given a checker that flags chosen
candidates): a set with flagged candidates, a set with nothing safe (the charge comes back), and
uploads that are refused before anything of them is stored."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from sqlalchemy import func, select

from core.settings import EngineSettings, PaymentsSettings
from db.models import (
    AuditEntry,
    Job,
    JobStatus,
    LedgerEntry,
    LedgerKind,
    Photo,
    StyleTraining,
    User,
    WebhookDelivery,
)
from domain import billing, conversations, webhooks
from facechain.engine import Engine, EngineConfig
from facechain.safety import SafetyChecker
from tasks.generate import generate
from tasks.jobs import run_gpu_job
from telegram_ui.i18n import ntranslate, translate
from tests.bot.conftest import ADMIN_ID, BotHarness, give_selfie, jobs_of, published
from tests.bot.test_pose_flow import IO_TASKS, TASK, worker_context
from tests.facechain.face_data import encode, landscape_rgb
from tests.utils.chat import prefix
from tests.utils.fake_safety import FlagChosen
from tests.utils.fake_telegram import FakeUser


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Engine.from_config(EngineConfig(profile="tiny", device="cpu", steps=2, batch_size=6))
    torch.set_num_threads(threads)


def worker_settings() -> EngineSettings:
    # 4 portraits from 6 candidates, as in production; no likeness floor (random tiny faces).
    return EngineSettings(profile="tiny", num_images=4, num_candidates=6, similarity_floor=-1)


async def queue_portraits(bot: BotHarness, user: FakeUser) -> int:
    """A selfie, /style, "Use this style": the queued job's id (its message taken off gpu)."""
    give_selfie(bot, user.id)
    tg = bot.tg
    since = len(tg.calls)
    tg.send_text(user, "/style")
    await tg.wait_for("sendPhoto", chat_id=user.id, since=since)
    picker = [m for m in tg.bot_messages(user.id) if "photo" in m][-1]
    tg.press_button(user, picker, translate(user.language_code, "btn.use_style"))
    await tg.wait_text(user.id, prefix(user, "job.queued"))
    await tg.idle()
    [(task, [job_id])] = published(bot.celery, "gpu")
    assert task == "portrait.generate"
    return int(job_id)


async def paint(bot: BotHarness, engine: Engine, job_id: int, checker: FlagChosen) -> JobStatus:
    """The gpu worker paints the job with this checker, then the io worker delivers."""
    assert bot.config is not None
    config = bot.config.model_copy(update={"engine": worker_settings()})
    engine.set_safety_checker(checker)
    try:
        with worker_context(bot, engine, config):
            status = await asyncio.to_thread(run_gpu_job, TASK, job_id, generate)  # type: ignore[arg-type]
            for name, args in published(bot.celery, "io"):
                # Webhook deliveries stay rows here (their event is checked as a row).
                if name in IO_TASKS:
                    await asyncio.to_thread(IO_TASKS[name], *args)
    finally:
        engine.set_safety_checker(SafetyChecker.random(11))
    assert status is not None
    return status


def flag_rows(bot: BotHarness, action: str) -> list[AuditEntry]:
    with bot.db.session() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action)))


def subscribe(bot: BotHarness) -> None:
    with bot.db.session() as s:
        webhooks.create_endpoint(
            s,
            url="http://hooks.invalid/",
            secret="s" * 32,
            events=["safety.flagged"],
            enabled=True,
            actor="api",
        )


class TestOutputs:
    async def test_three_of_six_flagged_give_three_portraits_and_one_sentence(
        self, bot: BotHarness, engine: Engine
    ) -> None:
        assert bot.config is not None
        bot.config.engine.num_images = 4
        subscribe(bot)
        tg = bot.tg
        ann = tg.user(5101, "Ann", "en")
        job_id = await queue_portraits(bot, ann)
        since = len(tg.calls)
        checker = FlagChosen({1, 3, 5})
        assert await paint(bot, engine, job_id, checker) is JobStatus.SUCCEEDED
        assert checker.calls == [6]

        album = await tg.wait_for("sendMediaGroup", chat_id=ann.id, since=since)
        assert len(album.get("media")) == 3
        held = ntranslate("en", "job.held_back", 1)
        done = await tg.wait_text(ann.id, held, since=since)
        assert ntranslate("en", "job.done", 3) in (done.get("text") or "")
        [job] = jobs_of(bot, ann.id)
        assert len(job.result_blobs) == 3
        assert job.result_meta["held_back"] == 1
        # Only the safe candidates' seeds were kept (candidate i has seed + i).
        base = min(job.result_meta["seeds"])
        assert sorted(s - base for s in job.result_meta["seeds"]) == [0, 2, 4]
        rows = flag_rows(bot, "safety.flagged.portrait")
        assert len(rows) == 3
        assert {r.details["job_id"] for r in rows} == {job_id}
        assert all("image" not in r.details and r.details["score"] > 0 for r in rows)
        with bot.db.session() as s:
            [event] = s.scalars(
                select(WebhookDelivery).where(WebhookDelivery.event == "safety.flagged")
            ).all()
            assert (event.payload["kind"], event.payload["count"]) == ("portrait", 3)
        # Nothing flagged was kept: three result blobs, nothing else of the job's.
        assert not [c for c in tg.calls[since:] if c.method == "sendPhoto"]

    async def test_nothing_safe_fails_and_the_free_slot_comes_back(
        self, bot: BotHarness, engine: Engine
    ) -> None:
        tg = bot.tg
        bob = tg.user(5102, "Bob", "ru")
        job_id = await queue_portraits(bot, bob)
        with bot.db.session() as s:
            user_id = s.scalar(select(User.id).where(User.telegram_id == bob.id))
            assert user_id is not None
            assert billing.quota_used(s, user_id) == 1
        since = len(tg.calls)
        assert await paint(bot, engine, job_id, FlagChosen(every=True)) is JobStatus.FAILED

        reason = translate("ru", "error.safety_flagged")
        await tg.wait_text(bob.id, translate("ru", "job.failed", reason=reason), since=since)
        assert not [c for c in tg.calls[since:] if c.method in ("sendPhoto", "sendMediaGroup")]
        [job] = jobs_of(bot, bob.id)
        assert (job.status, job.error_code) == (JobStatus.FAILED, "safety_flagged")
        assert job.charge_returned_at is not None
        assert not job.result_blobs
        with bot.db.session() as s:
            assert billing.quota_used(s, user_id) == 0
        assert len(flag_rows(bot, "safety.flagged.portrait")) == 6


class TestOutputsPaid:
    async def test_nothing_safe_gives_the_credit_back_in_the_ledger(
        self, harness: BotHarness, engine: Engine
    ) -> None:
        harness.payments = PaymentsSettings(enabled=True, price_portrait=1)
        await harness.start(daily_quota=0)
        tg = harness.tg
        cat = tg.user(5103, "Cat", "en")
        give_selfie(harness, cat.id)
        with harness.db.session() as s:
            billing.grant_credits(s, cat.id, 2, actor="api")
        job_id = await queue_portraits(harness, cat)
        [job] = jobs_of(harness, cat.id)
        assert (job.charge, job.charge_credits) == ("credits", 1)

        assert await paint(harness, engine, job_id, FlagChosen(every=True)) is JobStatus.FAILED
        reason = translate("en", "error.safety_flagged")
        await tg.wait_text(cat.id, translate("en", "job.failed", reason=reason))
        with harness.db.session() as s:
            user = s.scalar(select(User).where(User.telegram_id == cat.id))
            assert user is not None
            assert user.credits == 2
            ledger = s.scalars(
                select(LedgerEntry).where(LedgerEntry.user_id == user.id).order_by(LedgerEntry.id)
            ).all()
            assert [(e.kind, e.delta) for e in ledger] == [
                (LedgerKind.GRANT, 2),
                (LedgerKind.SPEND, -1),
                (LedgerKind.GIVEBACK, 1),
            ]
            assert ledger[-1].note == "safety_flagged"
            assert billing.ledger_mismatches(s) == []


# ---- uploads ----


def counts(bot: BotHarness) -> dict[str, int]:
    """Rows that an upload could leave behind, and the files in the blob store."""
    with bot.db.session() as s:
        rows = {
            "photos": s.scalar(select(func.count(Photo.id))) or 0,
            "jobs": s.scalar(select(func.count(Job.id))) or 0,
            "trainings": s.scalar(select(func.count(StyleTraining.id))) or 0,
        }
    files = [p for p in bot.blobs.root.rglob("*") if p.is_file()]
    return {**rows, "blobs": len(files)}


@pytest.fixture
async def strict(harness: BotHarness) -> BotHarness:
    """A running bot whose upload checker flags everything."""
    harness.checker = FlagChosen(every=True)
    await harness.start(training_min_images=2)
    return harness


async def refused(bot: BotHarness, user: FakeUser, data: bytes, kind: str) -> None:
    """Send `data`; the bot refuses it with the reason; nothing of it is kept."""
    tg = bot.tg
    await tg.idle()
    before = counts(bot)
    since = len(tg.calls)
    tg.send_photo(user, data)
    await tg.wait_text(user.id, translate(user.language_code, "error.unsafe_image"), since=since)
    await tg.idle()
    assert counts(bot) == before
    assert not published(bot.celery, "gpu")
    rows = flag_rows(bot, f"safety.flagged.{kind}")
    assert rows
    assert rows[-1].details["kind"] == kind
    assert rows[-1].details["score"] > 0


class TestUploads:
    async def test_a_flagged_selfie_is_refused_and_not_kept(
        self, strict: BotHarness, face_bytes: Any
    ) -> None:
        ann = strict.tg.user(5201, "Ann", "zh")
        strict.tg.send_text(ann, "/start")
        await refused(strict, ann, face_bytes("man_pose1.png"), "selfie")
        assert (
            strict.metrics.registry.get_sample_value(
                "facechain_safety_flagged_total", {"kind": "selfie"}
            )
            == 1
        )

    async def test_a_flagged_pose_photo_is_refused_and_not_kept(
        self, strict: BotHarness, face_bytes: Any
    ) -> None:
        ann = strict.tg.user(5202, "Ann", "en")
        give_selfie(strict, ann.id)
        user_id = strict.db.call(
            lambda s: s.scalar(select(User.id).where(User.telegram_id == ann.id))
        )
        strict.db.call(
            conversations.update,
            user_id,
            conversations.State.AWAIT_POSE,
            pose_style_id=strict.style_ids[0],
        )
        await refused(strict, ann, face_bytes("man_pose3.png"), "pose")

    async def test_a_flagged_template_photo_is_refused_and_not_kept(
        self, strict: BotHarness, face_bytes: Any
    ) -> None:
        tg = strict.tg
        ann = tg.user(5203, "Ann", "en")
        give_selfie(strict, ann.id)
        tg.send_text(ann, "/template")
        await tg.wait_text(ann.id, translate("en", "template.send_own"))
        await refused(strict, ann, face_bytes("template_group.jpg"), "template_photo")

    async def test_a_flagged_training_image_is_refused_and_not_kept(
        self, strict: BotHarness
    ) -> None:
        tg = strict.tg
        admin = tg.user(ADMIN_ID, "Root", "en")
        tg.send_text(admin, "/train_style")
        await tg.wait_text(admin.id, "Let's train a style")
        await refused(strict, admin, encode(landscape_rgb(seed=1)), "training")

    async def test_repeated_flags_alert_the_admin_chat_once(
        self, strict: BotHarness, face_bytes: Any
    ) -> None:
        assert strict.config is not None
        tg = strict.tg
        eve = tg.user(5204, "Eve", "en")
        for _ in range(strict.config.safety.alert_after + 1):
            await refused(strict, eve, face_bytes("man_pose1.png"), "selfie")
        with strict.db.session() as s:
            user_id = s.scalar(select(User.id).where(User.telegram_id == eve.id))
        alerts = [t for t in tg.sent_texts(ADMIN_ID) if t.startswith("🛡")]
        assert alerts == [
            ntranslate(
                "en",
                "admin.safety_alert",
                strict.config.safety.alert_after,
                user=user_id,
                kind="selfie",
            )
        ]

    async def test_the_tiny_checker_lets_a_selfie_through(
        self, bot: BotHarness, face_bytes: Any
    ) -> None:
        ann = bot.tg.user(5205, "Ann", "en")
        bot.tg.send_photo(ann, face_bytes("man_pose1.png"))
        await bot.tg.wait_text(ann.id, translate("en", "selfie.saved", count=1, max=5))
        assert (
            bot.metrics.registry.get_sample_value(
                "facechain_safety_checked_total", {"kind": "selfie"}
            )
            == 1
        )
        assert not flag_rows(bot, "safety.flagged.selfie")
