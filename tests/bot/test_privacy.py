"""/forget and selfie expiry: rows and blobs go, shared blobs stay, the user row survives."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.blobstore import LocalBlobStore
from db.base import utcnow
from db.models import (
    Job,
    JobStatus,
    Photo,
    PhotoKind,
    Style,
    StyleOrigin,
    User,
    UserSession,
    WebhookDelivery,
    WebhookEndpoint,
)
from domain.privacy import expire_photos, forget_user
from telegram_ui.i18n import translate
from tests.bot.conftest import BotHarness, give_selfie, jobs_of
from tests.utils.factories import make_selfie, make_style, make_user


class TestForgetCommand:
    async def test_forget_removes_rows_and_blobs(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(6001, "Ann", "en", username="ann")
        user_id, photo_id = give_selfie(bot, ann.id)
        with bot.db.session() as s:
            selfie_key = s.get(Photo, photo_id).sha256
            job = Job(
                user_id=user_id,
                kind="portrait",
                params={"photo_ids": [photo_id]},
                result_blobs=[bot.blobs.put(b"portrait-a"), bot.blobs.put(b"portrait-b")],
            )
            s.add(job)
            s.flush()
            job.transition(JobStatus.RUNNING)
            job.transition(JobStatus.SUCCEEDED)
            result_keys = list(job.result_blobs)
            s.add(UserSession(user_id=user_id, state="idle", data={"pending_style_id": 1}))
        tg.send_text(ann, "/forget")
        await tg.wait_text(ann.id, translate("en", "forget.confirm"))
        since = len(tg.calls)
        tg.press_button(ann, tg.bot_messages(ann.id)[-1], translate("en", "btn.forget_yes"))
        await tg.wait_text(
            ann.id,
            ("🗑 Done. I deleted 1 photo and 1 job with their results. Nothing of yours is kept."),
            since=since,
        )
        with bot.db.session() as s:
            assert s.scalar(select(func.count(Photo.id)).where(Photo.user_id == user_id)) == 0
            assert s.get(UserSession, user_id) is None
            user = s.get(User, user_id)
            assert user is not None
            assert user.username is None
        assert jobs_of(bot, ann.id) == []
        for key in [selfie_key, *result_keys]:
            assert not bot.blobs.exists(key)

    async def test_an_active_jobs_status_message_says_cancelled(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(6003, "Ann", "en")
        user_id, photo_id = give_selfie(bot, ann.id)
        status = tg._bot_message(ann.id, text=translate("en", "job.running", percent=40))
        with bot.db.session() as s:
            job = Job(
                user_id=user_id,
                kind="portrait",
                params={"photo_ids": [photo_id]},
                chat_id=ann.id,
                status_message_id=status["message_id"],
            )
            s.add(job)
            s.flush()
            job.transition(JobStatus.RUNNING)
            job_id = job.id
        tg.send_text(ann, "/forget")
        await tg.wait_text(ann.id, translate("en", "forget.confirm"))
        since = len(tg.calls)
        tg.press_button(ann, tg.bot_messages(ann.id)[-1], translate("en", "btn.forget_yes"))
        await tg.wait_text(
            ann.id,
            ("🗑 Done. I deleted 1 photo and 0 jobs with their results. Nothing of yours is kept."),
            since=since,
        )
        assert tg.current(status)["text"] == translate("en", "job.cancelled")
        with bot.db.session() as s:
            running = s.get(Job, job_id)
            assert running is not None
            # The worker owns it until it stops; nothing ties it to Ann any more.
            assert (running.cancel_requested, running.user_id, running.chat_id) == (
                True,
                None,
                None,
            )

    async def test_no_keeps_everything(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(6002, "Ann", "zh")
        give_selfie(bot, ann.id)
        tg.send_text(ann, "/forget")
        await tg.wait_text(ann.id, translate("zh", "forget.confirm"))
        tg.press_button(ann, tg.bot_messages(ann.id)[-1], translate("zh", "btn.forget_no"))
        await tg.wait_text(ann.id, translate("zh", "forget.kept"))
        with bot.db.session() as s:
            assert s.scalar(select(func.count(Photo.id))) == 1


class TestForgetUser:
    def test_trained_styles_and_shared_blobs(
        self, session: Session, blobs: LocalBlobStore
    ) -> None:
        ann, bob = make_user(session, 6101), make_user(session, 6102)
        mine = make_selfie(session, blobs, ann)
        shared = make_selfie(session, blobs, bob)  # same fixture bytes as Ann's: one blob
        assert mine.sha256 == shared.sha256
        lora = blobs.put(b"lora-bytes")
        style = make_style(
            session, "ann-ink", origin=StyleOrigin.TRAINED, owner_id=ann.id, lora_blob=lora
        )
        running = Job(user_id=ann.id, kind="portrait", params={}, status=JobStatus.RUNNING)
        session.add(running)
        session.flush()
        report = forget_user(session, blobs, ann.id)
        session.commit()
        assert report.photos == 1
        assert report.styles == 1
        assert report.jobs == 0
        assert session.get(Style, style.id) is None
        assert not blobs.exists(lora)
        assert blobs.exists(mine.sha256)  # Bob still uses these bytes
        assert running.cancel_requested  # the worker is asked to stop; it owns the row
        assert running.user_id is None  # and nothing of Ann stays on it
        assert running.params == {}

    def test_pose_photo_and_its_extracted_map_go(
        self, session: Session, blobs: LocalBlobStore
    ) -> None:
        ann = make_user(session, 6103)
        photo, skeleton = blobs.put(b"pose-photo"), blobs.put(b"pose-map")
        job = Job(
            user_id=ann.id,
            kind="portrait",
            params={"pose_blob": photo, "pose_map_blob": skeleton},
        )
        session.add(job)
        session.flush()
        job.transition(JobStatus.RUNNING)
        job.fail("pose_no_person", "nobody")
        assert forget_user(session, blobs, ann.id).jobs == 1
        session.commit()
        assert not blobs.exists(photo)
        assert not blobs.exists(skeleton)

    def test_queued_jobs_are_cancelled_with_their_webhook(
        self, session: Session, blobs: LocalBlobStore
    ) -> None:
        ann = make_user(session, 6104)
        session.add(
            WebhookEndpoint(url="http://x.invalid/", secret="s" * 16, events=["job.cancelled"])
        )
        queued = Job(user_id=ann.id, kind="portrait", params={}, chat_id=6104)
        queued.status_message_id = 77
        session.add(queued)
        session.flush()
        job_id = queued.id
        report = forget_user(session, blobs, ann.id)
        session.commit()
        assert report.jobs == 1
        assert report.cancelled_messages == ((6104, 77),)
        assert session.get(Job, job_id) is None
        event = session.scalar(
            select(WebhookDelivery).where(WebhookDelivery.event == "job.cancelled")
        )
        assert event is not None
        assert (event.payload["job_id"], event.payload["status"]) == (job_id, "cancelled")
        assert session.get(User, ann.id).forgotten_at is not None  # type: ignore[union-attr]


class TestExpire:
    def test_expired_photos_go(self, session: Session, blobs: LocalBlobStore) -> None:
        ann = make_user(session, 6201)
        old = make_selfie(session, blobs, ann, "man_pose1.png")
        new = make_selfie(session, blobs, ann, "man_pose2.png")
        old.expires_at = utcnow() - timedelta(days=1)
        new.expires_at = utcnow() + timedelta(days=1)
        session.flush()
        old_key = old.sha256
        assert expire_photos(session, blobs, utcnow()) == 1
        session.commit()
        kinds = session.scalars(select(Photo.kind).where(Photo.user_id == ann.id)).all()
        assert kinds == [PhotoKind.SELFIE]
        assert not blobs.exists(old_key)
        assert blobs.exists(new.sha256)
