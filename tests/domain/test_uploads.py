"""Per-user storage caps: the bytes of photos stored per UTC day, the template photos kept, and
pose photos stored only by an accepted job."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from core.blobstore import LocalBlobStore, sha256_hex
from core.errors import ActiveJobExists, TemplatePhotoLimitReached, UploadLimitReached
from core.settings import LimitsSettings
from db.models import Job, JobKind, JobStatus, Photo, PhotoKind, User
from db.session import Database
from domain import jobs, uploads
from domain.photos import TelegramFile, add_training_image, store_selfie, store_template_photo
from facechain.faces import Face
from facechain.quality import SelfieAnalysis
from facechain.templates import TemplateAnalysis
from tests.utils.factories import make_selfie, make_style, make_user

MIB = 1024 * 1024
SOURCE = TelegramFile("F", "U")


def picture(n: int, side: int = 64) -> bytes:
    """A distinct small PNG (its own sha256) for each n."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (n * 7 % 256, n * 13 % 256, 200)).save(buf, "PNG")
    return buf.getvalue()


def analysis() -> TemplateAnalysis:
    face = Face((8.0, 8.0, 40.0, 40.0), np.zeros((5, 2), dtype=np.float32), 0.99)
    return TemplateAnalysis(64, 64, [face])


def template_photos(db: Database, user_id: int) -> list[Photo]:
    with db.session() as s:
        return list(
            s.scalars(
                select(Photo)
                .where(Photo.user_id == user_id, Photo.kind == PhotoKind.TEMPLATE)
                .order_by(Photo.id)
            )
        )


class TestDailyUploadBytes:
    def test_counts_the_day_refuses_over_it_and_starts_again_the_next_day(
        self, committed_db: Database
    ) -> None:
        limits = LimitsSettings(upload_bytes_per_day=2 * MIB)
        with committed_db.session() as s:
            user_id = make_user(s, 8101).id
        day = datetime(2026, 12, 7, 23, 0, tzinfo=UTC)
        assert committed_db.call(uploads.count_upload, user_id, MIB, limits, day) == MIB
        assert committed_db.call(uploads.count_upload, user_id, MIB, limits, day) == 2 * MIB
        with pytest.raises(UploadLimitReached) as info:
            committed_db.call(uploads.count_upload, user_id, 1, limits, day)
        # The refusal says which limit, in the user's words (MB a day).
        assert info.value.code == "upload_limit"
        assert info.value.details == {"limit_mb": 2}
        next_day = day + timedelta(hours=2)
        assert committed_db.call(uploads.count_upload, user_id, MIB, limits, next_day) == MIB

    def test_a_selfie_over_the_day_is_refused_and_nothing_stored(
        self, committed_db: Database, blobs: LocalBlobStore
    ) -> None:
        limits = LimitsSettings(upload_bytes_per_day=MIB)
        data = picture(1)
        with committed_db.session() as s:
            user = make_user(s, 8102)
            user.upload_day = datetime.now(UTC).date()
            user.upload_bytes = MIB - len(data) + 1
            user_id = user.id
        face = {"box": [8.0, 8.0, 40.0, 40.0], "score": 0.99}
        with pytest.raises(UploadLimitReached):
            committed_db.call(
                store_selfie,
                blobs,
                user_id,
                data,
                SelfieAnalysis(64, 64),
                [face],
                0,
                SOURCE,
                limits,
            )
        assert not blobs.exists(sha256_hex(data))
        with committed_db.session() as s:
            assert s.scalars(select(Photo).where(Photo.user_id == user_id)).all() == []
            row = s.get(User, user_id)
            assert row is not None
            assert row.upload_bytes == MIB - len(data) + 1

    def test_every_kind_of_photo_counts(
        self, committed_db: Database, blobs: LocalBlobStore
    ) -> None:
        limits = LimitsSettings()
        with committed_db.session() as s:
            user_id = make_user(s, 8103).id
        face = {"box": [8.0, 8.0, 40.0, 40.0], "score": 0.99}
        sizes = []
        data = picture(1)
        committed_db.call(
            store_selfie, blobs, user_id, data, SelfieAnalysis(64, 64), [face], 0, SOURCE, limits
        )
        sizes.append(len(data))
        data = picture(2)
        committed_db.call(store_template_photo, blobs, user_id, data, analysis(), SOURCE, limits)
        sizes.append(len(data))
        data = picture(3)
        committed_db.call(add_training_image, blobs, user_id, data, (64, 64), SOURCE, limits)
        sizes.append(len(data))
        # The same selfie again stores nothing, so it counts nothing.
        committed_db.call(
            store_selfie,
            blobs,
            user_id,
            picture(1),
            SelfieAnalysis(64, 64),
            [face],
            0,
            SOURCE,
            limits,
        )
        with committed_db.session() as s:
            row = s.get(User, user_id)
            assert row is not None
            assert row.upload_bytes == sum(sizes)


class TestTemplatePhotosKept:
    def test_the_oldest_beyond_the_cap_go_with_their_bytes(
        self, committed_db: Database, blobs: LocalBlobStore
    ) -> None:
        limits = LimitsSettings(max_template_photos=3)
        with committed_db.session() as s:
            user_id = make_user(s, 8201).id
        sent = [picture(n) for n in range(5)]
        for data in sent:
            committed_db.call(
                store_template_photo, blobs, user_id, data, analysis(), SOURCE, limits
            )
        kept = template_photos(committed_db, user_id)
        assert [p.sha256 for p in kept] == [sha256_hex(d) for d in sent[2:]]
        assert [blobs.exists(sha256_hex(d)) for d in sent] == [False, False, True, True, True]

    def test_a_photo_an_active_job_uses_stays_and_all_in_use_is_refused(
        self, committed_db: Database, blobs: LocalBlobStore
    ) -> None:
        limits = LimitsSettings(max_template_photos=2, active_jobs_per_user=5)
        with committed_db.session() as s:
            user_id = make_user(s, 8202).id
        first, _ = committed_db.call(
            store_template_photo, blobs, user_id, picture(10), analysis(), SOURCE, limits
        )
        second, _ = committed_db.call(
            store_template_photo, blobs, user_id, picture(11), analysis(), SOURCE, limits
        )
        with committed_db.session() as s:
            for photo_id in (first, second):
                s.add(
                    Job(
                        user_id=user_id,
                        kind=JobKind.TEMPLATE,
                        status=JobStatus.QUEUED,
                        params={"template_photo_id": photo_id},
                    )
                )
        with pytest.raises(TemplatePhotoLimitReached) as info:
            committed_db.call(
                store_template_photo, blobs, user_id, picture(12), analysis(), SOURCE, limits
            )
        assert info.value.details == {"max": 2}
        assert not blobs.exists(sha256_hex(picture(12)))
        assert [p.id for p in template_photos(committed_db, user_id)] == [first, second]
        # One job ends: its photo, the oldest free one, makes room.
        with committed_db.session() as s:
            job = s.scalars(select(Job).where(Job.user_id == user_id).order_by(Job.id)).first()
            assert job is not None
            job.status = JobStatus.SUCCEEDED
        third, _ = committed_db.call(
            store_template_photo, blobs, user_id, picture(12), analysis(), SOURCE, limits
        )
        assert [p.id for p in template_photos(committed_db, user_id)] == [second, third]
        assert not blobs.exists(sha256_hex(picture(10)))


class TestPosePhoto:
    def test_a_refused_job_stores_no_pose(
        self, committed_db: Database, blobs: LocalBlobStore
    ) -> None:
        limits = LimitsSettings()
        with committed_db.session() as s:
            user = make_user(s, 8301)
            make_selfie(s, blobs, user)
            style_id = make_style(s, "pose-cap").id
            s.add(Job(user_id=user.id, kind=JobKind.PORTRAIT, status=JobStatus.RUNNING, params={}))
            user_id = user.id
        pose = picture(20)
        with pytest.raises(ActiveJobExists):
            committed_db.call(
                jobs.create_portrait_job,
                user_id,
                style_id=style_id,
                chat_id=1,
                limits=limits,
                is_admin=False,
                num_images=2,
                pose=jobs.PoseUpload(blobs, pose),
            )
        assert not blobs.exists(sha256_hex(pose))

    def test_an_accepted_job_stores_and_counts_it(
        self, committed_db: Database, blobs: LocalBlobStore
    ) -> None:
        limits = LimitsSettings()
        with committed_db.session() as s:
            user = make_user(s, 8302)
            make_selfie(s, blobs, user)
            style_id = make_style(s, "pose-ok").id
            user_id = user.id
        pose = picture(21)
        created = committed_db.call(
            jobs.create_portrait_job,
            user_id,
            style_id=style_id,
            chat_id=1,
            limits=limits,
            is_admin=False,
            num_images=2,
            pose=jobs.PoseUpload(blobs, pose),
        )
        with committed_db.session() as s:
            job = s.get(Job, created.job_id)
            row = s.get(User, user_id)
            assert job is not None
            assert row is not None
            assert job.params["pose_blob"] == sha256_hex(pose)
            assert row.upload_bytes == len(pose)
        assert blobs.get(sha256_hex(pose)) == pose
