"""/forget and expiry: rows and blobs go, shared blobs stay, the user row survives; kept records
(webhook deliveries, audit rows) lose the ids; results and training pictures have a retention."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.blobstore import LocalBlobStore
from core.errors import ResultExpired
from core.settings import LimitsSettings, PaymentsSettings
from db.base import utcnow
from db.models import (
    AuditEntry,
    Job,
    JobStatus,
    Photo,
    PhotoKind,
    Style,
    StyleOrigin,
    StyleTraining,
    User,
    UserSession,
    WebhookDelivery,
    WebhookEndpoint,
)
from domain import billing, jobs, users
from domain.privacy import (
    FORGOTTEN,
    drop_training_images,
    expire_photos,
    expire_results,
    forget_user,
)
from telegram_ui.i18n import translate
from tests.bot.conftest import BotHarness, give_selfie, jobs_of
from tests.utils.factories import make_selfie, make_style, make_user

PAYMENTS = PaymentsSettings(enabled=True)


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

    def test_webhook_payloads_and_audit_rows_keep_no_ids(
        self, session: Session, blobs: LocalBlobStore
    ) -> None:
        """Kept records forget the user too: delivery payloads (job and payment events) and
        audit rows lose the Telegram id, user id and charge ids; amounts stay, and other
        users' records are untouched (on dbcd432 they kept all of it)."""
        ann, bob = make_user(session, 6105), make_user(session, 6106)
        session.add(
            WebhookEndpoint(
                url="http://x.invalid/",
                secret="s" * 16,
                events=["payment.succeeded", "payment.refunded", "job.cancelled"],
            )
        )
        session.flush()
        pack = billing.create_pack(session, title="p", credits=5, stars=50, actor="t")
        for user, charge in ((ann, "charge-ann-1"), (bob, "charge-bob-1")):
            payload = billing.issue_invoice(session, user.id, pack.id, PAYMENTS).payload
            billing.record_payment(session, user.telegram_id, payload, 50, charge)
        billing.refund_payment(session, "charge-ann-1", "admin")
        users.set_quota(session, ann.telegram_id, 3, "api")
        users.set_quota(session, bob.telegram_id, 4, "api")
        queued = Job(user_id=ann.id, kind="portrait", params={})
        session.add(queued)
        session.flush()

        forget_user(session, blobs, ann.id, keep_payment_records=True)
        session.flush()

        deliveries = session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)).all()
        text = " ".join(json.dumps(d.payload) for d in deliveries)
        assert "charge-ann-1" not in text
        assert str(ann.telegram_id) not in text
        assert "charge-bob-1" in text
        assert str(bob.telegram_id) in text
        anns = [d.payload for d in deliveries if d.payload.get("charge_id") == FORGOTTEN]
        assert len(anns) == 2  # succeeded and refunded
        assert all(p["telegram_id"] is None and p["user_id"] is None for p in anns)
        assert all(p["stars"] == 50 for p in anns)
        cancelled = [d.payload for d in deliveries if d.payload.get("job_id") == queued.id]
        assert cancelled
        assert all(p["user_id"] is None for p in cancelled)
        audit = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        audit_text = " ".join(f"{a.target} {json.dumps(a.details)}" for a in audit)
        assert "charge-ann-1" not in audit_text
        assert f"user:{ann.telegram_id}" not in audit_text
        assert f"user:{bob.telegram_id}" in audit_text
        refund = next(a for a in audit if a.action == "payment.refund")
        assert refund.details["charge_id"] == FORGOTTEN
        assert refund.details["debited"] == 5


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


class TestRetention:
    def test_results_past_retention_go_and_the_rows_say_so(
        self, session: Session, blobs: LocalBlobStore
    ) -> None:
        ann = make_user(session, 6301)
        old_key, new_key = blobs.put(b"old-portrait"), blobs.put(b"new-portrait")
        jobs_by_age = {}
        for days, key in ((31, old_key), (2, new_key)):
            job = Job(user_id=ann.id, kind="portrait", params={}, result_blobs=[key])
            session.add(job)
            session.flush()
            job.transition(JobStatus.RUNNING)
            job.transition(JobStatus.SUCCEEDED, now=utcnow() - timedelta(days=days))
            jobs_by_age[days] = job
        session.flush()
        assert expire_results(session, blobs, utcnow(), timedelta(days=30)) == 1
        session.commit()
        old, new = jobs_by_age[31], jobs_by_age[2]
        assert not blobs.exists(old_key)
        assert blobs.exists(new_key)
        assert old.result_blobs == []
        assert old.result_meta["expired_at"]
        assert new.result_blobs == [new_key]
        # "Show again" and HD on the expired job say it expired, not that it never was.
        with pytest.raises(ResultExpired):
            jobs.job_results(session, ann.id, old.id)
        with pytest.raises(ResultExpired):
            jobs.create_upscale_job(
                session,
                ann.id,
                source_job_id=old.id,
                index=0,
                size=2048,
                chat_id=ann.telegram_id,
                limits=LimitsSettings(),
                is_admin=False,
            )
        assert jobs.job_results(session, ann.id, new.id) is not None
        # A second run finds nothing more to do.
        assert expire_results(session, blobs, utcnow(), timedelta(days=30)) == 0

    def test_training_pictures_go_once_the_training_ends(
        self, session: Session, blobs: LocalBlobStore
    ) -> None:
        ann = make_user(session, 6302)
        shared = blobs.put(b"shared-picture")
        trainings = {}
        for outcome in ("succeeded", "failed", "cancelled", "running"):
            own = blobs.put(f"picture-{outcome}".encode())
            for key in (own, shared) if outcome != "succeeded" else (own,):
                if session.scalar(select(Photo).where(Photo.sha256 == key)) is None:
                    session.add(
                        Photo(
                            user_id=ann.id,
                            kind=PhotoKind.TRAINING,
                            sha256=key,
                            size_bytes=1,
                            width=64,
                            height=64,
                            faces=[],
                            expires_at=utcnow() + timedelta(days=30),
                        )
                    )
            job = Job(user_id=ann.id, kind="training", params={})
            session.add(job)
            session.flush()
            if outcome != "cancelled":
                job.transition(JobStatus.RUNNING)
            if outcome == "succeeded":
                job.transition(JobStatus.SUCCEEDED)
            elif outcome == "failed":
                job.fail("internal", "boom")
            elif outcome == "cancelled":
                job.transition(JobStatus.CANCELLED)
            images = [own] if outcome == "succeeded" else [own, shared]
            training = StyleTraining(
                user_id=ann.id,
                job_id=job.id,
                name=outcome,
                trigger_word=outcome,
                image_blobs=images,
                captions=[],
            )
            session.add(training)
            session.flush()
            trainings[outcome] = (training, own)
        assert drop_training_images(session, blobs) == 3
        session.commit()
        for outcome in ("succeeded", "failed", "cancelled"):
            training, own = trainings[outcome]
            assert training.image_blobs == [], outcome
            assert not blobs.exists(own), outcome
        running, own = trainings["running"]
        assert running.image_blobs == [own, shared]
        assert blobs.exists(own)
        assert blobs.exists(shared)  # the running training still uses it
        kept = set(session.scalars(select(Photo.sha256).where(Photo.user_id == ann.id)))
        assert kept == {own, shared}
        assert drop_training_images(session, blobs) == 0

    async def test_show_again_on_expired_results_says_they_expired(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(6303, "Ann", "ru")
        user_id, _ = give_selfie(bot, ann.id)
        with bot.db.session() as s:
            job = Job(
                user_id=user_id,
                kind="portrait",
                params={},
                result_blobs=[bot.blobs.put(b"portrait-old")],
            )
            s.add(job)
            s.flush()
            job.transition(JobStatus.RUNNING)
            job.transition(JobStatus.SUCCEEDED)
            key = job.result_blobs[0]
        tg.send_text(ann, "/history")
        await tg.wait_text(ann.id, translate("ru", "history.title"))
        listing = tg.bot_messages(ann.id)[-1]
        # The retention ends while the old list is still on the screen.
        expired = bot.db.call(
            expire_results, bot.blobs, utcnow() + timedelta(days=31), timedelta(days=30)
        )
        assert expired == 1
        assert not bot.blobs.exists(key)
        since = len(tg.calls)
        tg.press_button(ann, listing, translate("ru", "btn.show_results", n=1))
        await tg.wait_text(ann.id, translate("ru", "error.result_expired"), since=since)
        assert not tg.calls_to("sendPhoto")
