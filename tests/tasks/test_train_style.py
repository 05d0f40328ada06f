"""gpu task `style.train` on the tiny profile: trains, registers the user's style bound to its
base, the portrait pipeline then paints with it; idempotent, resumes after a crash, refuses a
bad picture set before training."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.blobstore import LocalBlobStore
from core.settings import AppConfig
from db.base import db_now
from db.models import (
    BaseModelName,
    Job,
    JobKind,
    JobStatus,
    Photo,
    Style,
    StyleOrigin,
    StyleTraining,
    Template,
    User,
    UserSession,
    WebhookDelivery,
    WebhookEndpoint,
)
from db.session import Database
from facechain.engine import Engine, EngineConfig, PortraitRequest
from tasks import train_style as train_module
from tasks.context import set_context
from tasks.generate import style_spec
from tasks.train_style import train_style
from tests.facechain.face_data import PORTRAITS, fixture_bytes
from tests.utils.factories import make_user

TRAINING_CONFIG = {
    "rank": 4,
    "max_train_steps": 6,
    "learning_rate": 1e-3,
    "checkpointing_steps": 2,
}


class WorkerDied(BaseException):
    """A worker process dying mid-task: nothing in the task catches it, the job stays running."""


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_engine() -> Engine:
    return Engine.from_config(EngineConfig(profile="tiny", device="cpu", steps=3))


@pytest.fixture
def ctx(
    db: Database,
    blobs: LocalBlobStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tiny_engine: Engine,
) -> Iterator[SimpleNamespace]:
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ENGINE_PROFILE", "tiny")
    monkeypatch.setenv("ENGINE_DEVICE", "cpu")
    monkeypatch.setenv("ENGINE_MODELS_DIR", str(tmp_path / "models"))
    context = SimpleNamespace(
        config=AppConfig(),
        db=db,
        blobs=blobs,
        engine=tiny_engine,
        celery=mock.Mock(),
        publisher=mock.Mock(),
    )
    set_context(context)  # type: ignore[arg-type]
    yield context
    set_context(None)


def make_training(
    session: Session, blobs: LocalBlobStore, images: list[bytes], base_model: str = "film"
) -> tuple[int, int]:
    """A user's queued training job; returns (job id, training id)."""
    user = make_user(session, 4242)
    training = StyleTraining(
        user_id=user.id,
        name="Ink wash",
        trigger_word="zkstyle",
        base_model=base_model,
        image_blobs=[blobs.put(data) for data in images],
        captions=[],
        config=TRAINING_CONFIG,
    )
    session.add(training)
    session.flush()
    job = Job(user_id=user.id, kind=JobKind.TRAINING, params={"training_id": training.id})
    session.add(job)
    session.flush()
    training.job_id = job.id
    session.flush()
    return job.id, training.id


def portraits() -> list[bytes]:
    return [fixture_bytes(name) for name in PORTRAITS]


class TestTrainStyle:
    def test_trains_registers_and_the_style_is_used(
        self, ctx: SimpleNamespace, session: Session
    ) -> None:
        assert train_style.name == "style.train"
        job_id, training_id = make_training(session, ctx.blobs, portraits())
        pictures = list(session.get(StyleTraining, training_id).image_blobs)  # type: ignore[union-attr]
        session.add(
            WebhookEndpoint(url="http://x.invalid/", secret="s" * 16, events=["style.trained"])
        )
        session.commit()

        assert train_style(job_id) == "succeeded"

        session.expire_all()
        job = session.get(Job, job_id)
        training = session.get(StyleTraining, training_id)
        assert job is not None
        assert training is not None
        assert job.status is JobStatus.SUCCEEDED
        assert job.progress == 1.0
        style = session.get(Style, job.result_meta["style_id"])
        assert style is not None
        assert job.style_id == style.id == training.style_id
        assert style.origin is StyleOrigin.TRAINED
        assert style.owner_id == job.user_id
        # Bound to the base it was trained on.
        assert style.base_model is BaseModelName.FILM
        assert job.result_meta["base_model"] == "film"
        assert (style.prompt, style.prompt_template, style.category) == (
            "zkstyle",
            "style",
            "trained",
        )
        assert ctx.blobs.exists(style.lora_blob)
        assert ctx.blobs.exists(style.extra["kohya_blob"])
        assert style.thumbnail_blob
        assert ctx.blobs.exists(style.thumbnail_blob)
        assert (training.step, training.style_prompt) == (6, "zkstyle")
        assert training.last_loss is not None
        meta = job.result_meta
        assert meta["steps"] == 6
        assert meta["eval_loss_after"] < meta["eval_loss_before"]
        assert not Path(training.checkpoint_path).exists()
        # The training's pictures went as it ended (the style keeps its own files).
        assert training.image_blobs == []
        assert not [k for k in pictures if ctx.blobs.exists(k)]
        # The documented event, published after the style was registered.
        event = session.scalar(
            select(WebhookDelivery).where(WebhookDelivery.event == "style.trained")
        )
        assert event is not None
        assert event.payload == {
            "style_id": style.id,
            "training_id": training_id,
            "job_id": job_id,
        }
        assert ctx.publisher.publish.call_args.args[0].deliveries == [event.id]

        # The portrait pipeline paints with it: the output differs from the bare base.
        spec = style_spec(ctx, style.id)  # type: ignore[arg-type]
        assert spec.lora_path is not None
        assert spec.base_model == "film"
        selfie = np.asarray(
            Image.open(io.BytesIO(fixture_bytes("man_pose1"))).convert("RGB").resize((112, 112))
        )
        images = {}
        for weight in (0.0, 1.0):
            request = PortraitRequest(
                selfies=[selfie], style=dataclasses.replace(spec, lora_weight=weight), seed=3
            )
            images[weight] = np.asarray(ctx.engine.portraits(request)[0].image, np.int16)
        assert np.abs(images[1.0] - images[0.0]).max() > 5

        # Redelivered after success: nothing happens.
        assert train_style(job_id) is None
        assert session.scalar(select(func.count(Style.id))) == 1

    def test_crash_mid_training_resumes_on_redelivery(
        self, ctx: SimpleNamespace, session: Session, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        job_id, training_id = make_training(session, ctx.blobs, portraits(), base_model="majic")
        session.commit()
        report = train_module._TrainingReporter.__call__

        def dies_at_step_3(self, progress):  # type: ignore[no-untyped-def]
            if progress.step == 3:
                raise WorkerDied
            report(self, progress)

        monkeypatch.setattr(train_module._TrainingReporter, "__call__", dies_at_step_3)
        with pytest.raises(WorkerDied):
            train_style(job_id)
        session.expire_all()
        job = session.get(Job, job_id)
        training = session.get(StyleTraining, training_id)
        assert job is not None
        assert training is not None
        assert job.status is JobStatus.RUNNING
        assert job.attempts == 1
        folder = Path(training.checkpoint_path)
        assert [p.name for p in folder.iterdir() if p.name.startswith("checkpoint-")] == [
            "checkpoint-0000002"
        ]

        monkeypatch.setattr(train_module._TrainingReporter, "__call__", report)
        # Redelivered at once, the message finds the dead attempt's lease still live: dropped.
        assert train_style(job_id) is None
        # The dead worker renews nothing; once its lease ran out, the redelivery takes over.
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_expires_at=db_now(session) - timedelta(seconds=1))
        )
        session.commit()
        assert train_style(job_id) == "succeeded"
        session.expire_all()
        job = session.get(Job, job_id)
        assert job is not None
        assert job.attempts == 2
        assert job.result_meta["resumed_from_step"] == 2
        assert job.result_meta["steps"] == 6
        style = session.get(Style, job.result_meta["style_id"])
        assert style is not None
        assert style.base_model is BaseModelName.MAJIC

    def test_bad_pictures_fail_before_training(
        self, ctx: SimpleNamespace, session: Session
    ) -> None:
        job_id, _ = make_training(session, ctx.blobs, portraits()[:3])
        session.commit()
        with mock.patch.object(train_module, "train_style_lora") as trainer:
            assert train_style(job_id) == "failed"
        trainer.assert_not_called()
        session.expire_all()
        job = session.get(Job, job_id)
        assert job is not None
        assert job.error_code == "training_too_few_images"
        assert "at least 5" in (job.error_detail or "")
        assert session.scalar(select(func.count(Style.id))) == 0

    def test_cancelled_before_start(self, ctx: SimpleNamespace, session: Session) -> None:
        job_id, _ = make_training(session, ctx.blobs, portraits())
        job = session.get(Job, job_id)
        assert job is not None
        job.cancel_requested = True
        session.commit()
        assert train_style(job_id) is None
        session.expire_all()
        assert session.get(Job, job_id).status is JobStatus.CANCELLED  # type: ignore[union-attr]


def _files_under(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*")]


class TestForget:
    def test_forget_after_a_trained_style_and_during_a_training_leaves_nothing(
        self, ctx: SimpleNamespace, session: Session, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from domain.privacy import forget_user
        from tasks.deliver import send_result
        from tasks.housekeeping import prune_worker_files
        from tests.utils.factories import make_selfie

        # A trained style, used once by this worker (its LoRA copied into the worker's cache).
        job_id, _ = make_training(session, ctx.blobs, portraits())
        session.commit()
        assert train_style(job_id) == "succeeded"
        session.expire_all()
        job = session.get(Job, job_id)
        assert job is not None
        user_id = job.user_id
        assert user_id is not None
        style = session.get(Style, job.result_meta["style_id"])
        assert style is not None
        cached = style_spec(ctx, style.id).lora_path  # type: ignore[arg-type]
        assert cached is not None
        assert cached.is_file()
        selfie = make_selfie(session, ctx.blobs, session.get(User, user_id))
        # A second training, running when the user sends /forget.
        second = StyleTraining(
            user_id=user_id,
            name="Charcoal",
            trigger_word="zkchar",
            base_model="film",
            image_blobs=[ctx.blobs.put(data) for data in reversed(portraits())],
            captions=[],
            config=TRAINING_CONFIG,
        )
        session.add(second)
        session.flush()
        running = Job(user_id=user_id, kind=JobKind.TRAINING, params={"training_id": second.id})
        session.add(running)
        session.flush()
        second.job_id = running.id
        session.commit()
        running_id, second_id = running.id, second.id
        keys = {
            selfie.sha256,
            style.lora_blob,
            style.thumbnail_blob,
            style.extra["kohya_blob"],
            *second.image_blobs,
        }
        assert all(ctx.blobs.exists(k) for k in keys)
        folder = train_module.checkpoint_dir(ctx, second_id)  # type: ignore[arg-type]

        report = train_module._TrainingReporter.__call__
        forgotten: list[bool] = []

        def forget_at_step_3(self, progress):  # type: ignore[no-untyped-def]
            report(self, progress)
            if progress.step == 3 and not forgotten:
                assert any(p.name.startswith("checkpoint-") for p in folder.iterdir())
                ctx.db.call(forget_user, ctx.blobs, user_id)
                forgotten.append(True)

        monkeypatch.setattr(train_module._TrainingReporter, "__call__", forget_at_step_3)
        assert train_style(running_id) == "cancelled"
        assert forgotten
        # The delivery step finds the detached job and discards it: nothing reaches the chat.
        assert send_result(running_id) == "discarded"
        # The worker's next prune (at the start of its next gpu job) drops the cached LoRA.
        prune_worker_files(ctx)  # type: ignore[arg-type]

        session.expire_all()
        owned = [
            Photo.user_id,
            Job.user_id,
            StyleTraining.user_id,
            Style.owner_id,
            Template.owner_id,
            UserSession.user_id,
        ]
        for column in owned:
            assert session.scalar(select(func.count()).where(column == user_id)) == 0
        assert session.get(Job, running_id) is None
        assert session.scalar(select(func.count(Style.id))) == 0
        assert not [k for k in keys if ctx.blobs.exists(k)]
        roots = (ctx.config.storage.data_dir, ctx.config.engine.models_dir, ctx.blobs.root)
        leftovers = [
            p
            for p in _files_under(*roots)
            if any(k in p.name for k in keys) or p.name == str(second_id)
        ]
        assert leftovers == []
        assert not folder.exists()
        assert not cached.exists()


class TestWarmShutdown:
    def test_a_stopping_worker_checkpoints_hands_the_job_over_and_the_next_resumes(
        self, ctx: SimpleNamespace, session: Session, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from celery.exceptions import Reject

        from tasks.warm import STOPPING

        job_id, training_id = make_training(session, ctx.blobs, portraits())
        session.commit()
        report = train_module._TrainingReporter.__call__

        def sigterm_at_step_3(self, progress):  # type: ignore[no-untyped-def]
            report(self, progress)
            if progress.step == 3:
                STOPPING.set()  # what the worker's warm-shutdown handler does

        monkeypatch.setattr(train_module._TrainingReporter, "__call__", sigterm_at_step_3)
        try:
            with pytest.raises(Reject) as raised:
                train_style(job_id)
        finally:
            STOPPING.clear()
        assert raised.value.requeue is True
        session.expire_all()
        job = session.get(Job, job_id)
        training = session.get(StyleTraining, training_id)
        assert job is not None
        assert training is not None
        # No outcome recorded, the lease given back at once, a checkpoint at the stop step
        # (checkpointing_steps is 2: step 3 has one only because of the stop).
        assert (job.status, job.error_code, job.lease_owner) == (JobStatus.RUNNING, None, None)
        assert job.lease_expires_at is not None
        assert job.lease_expires_at <= db_now(session)
        folder = Path(training.checkpoint_path)
        assert sorted(p.name for p in folder.iterdir() if p.name.startswith("checkpoint-")) == [
            "checkpoint-0000002",
            "checkpoint-0000003",
        ]

        # The requeued message, taken by the next worker at once: resumes from step 3.
        monkeypatch.setattr(train_module._TrainingReporter, "__call__", report)
        assert train_style(job_id) == "succeeded"
        session.expire_all()
        job = session.get(Job, job_id)
        assert job is not None
        assert job.result_meta["resumed_from_step"] == 3
        assert job.result_meta["steps"] == 6
        # A hand-back on shutdown is not a lost worker: the resumed claim is still attempt 1.
        assert job.attempts == 1
