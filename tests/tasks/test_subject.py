"""The subject words a gpu task gives the engine: the user's /subject choice wins over FairFace,
FairFace sees the whole aligned faces, and the decision is recorded in the job's result meta."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import create_autospec

import numpy as np
import pytest
from PIL import Image

from core.settings import AppConfig, BrokerSettings, DatabaseSettings, StorageSettings
from db.models import Photo, PhotoKind
from db.session import Database
from facechain.engine import Engine, Portrait, PortraitSet
from facechain.faces import Face, align_face
from facechain.prompts import subject_prompt
from tasks.celery_app import create_celery
from tasks.context import WorkerContext, set_context
from tasks.generate import generate
from tasks.inpaint import inpaint
from tasks.jobs import JobSnapshot, ProgressReporter
from tests.utils.factories import FACES, face_rows, make_selfie, make_style, make_user

FAIRFACE_SAYS = subject_prompt("man", "25-year-old, ")


@pytest.fixture
def ctx(db: Database, tmp_path: Path, database_url: str) -> Iterator[WorkerContext]:
    """A worker context on the test transaction whose engine is an autospec stub."""
    config = AppConfig(
        database=DatabaseSettings(url=database_url),
        broker=BrokerSettings(url="memory://"),
        storage=StorageSettings(DATA_DIR=tmp_path, blob_dir=tmp_path / "blobs"),
    )
    context = WorkerContext(config, create_celery(config))
    context.db = db
    engine = create_autospec(Engine, instance=True)
    engine.subject_for.return_value = FAIRFACE_SAYS
    engine.portraits.return_value = PortraitSet(
        [Portrait(image=Image.new("RGB", (8, 8)), seed=7)], requested=1
    )
    engine.inpaint.return_value = Image.new("RGB", (16, 16))
    context._engine = engine
    set_context(context)
    yield context
    set_context(None)


def portrait_job(ctx: WorkerContext, subject: str | None) -> JobSnapshot:
    with ctx.db.session() as s:
        user = make_user(s, telegram_id=8101, subject=subject)
        photo = make_selfie(s, ctx.blobs, user, "woman_pose1.png")
        style = make_style(s)
        params = {"photo_ids": [photo.id], "style_id": style.id, "num_images": 1, "seed": 7}
        params["subject"] = subject
        return JobSnapshot(
            id=1, user_id=user.id, params=params, style_id=style.id, template_id=None, attempts=1
        )


def engine_of(ctx: WorkerContext) -> Any:
    return ctx._engine


class TestGenerate:
    def test_user_choice_wins_over_fairface(self, ctx: WorkerContext) -> None:
        job = portrait_job(ctx, "woman")
        outcome = generate(ctx, job, ProgressReporter(ctx, job.id))
        engine = engine_of(ctx)
        engine.subject_for.assert_not_called()
        [request] = engine.portraits.call_args.args
        assert request.prompt_prefix == "a beautiful woman, "
        assert request.negative_suffix == ""
        assert outcome.result_meta["subject"] == {
            "value": "woman",
            "source": "user",
            "prefix": "a beautiful woman, ",
        }

    def test_user_man_gets_the_children_suffix(self, ctx: WorkerContext) -> None:
        job = portrait_job(ctx, "mature_man")
        generate(ctx, job, ProgressReporter(ctx, job.id))
        [request] = engine_of(ctx).portraits.call_args.args
        assert request.prompt_prefix == "a mature man, "
        assert request.negative_suffix == ", children"

    def test_auto_asks_fairface_on_the_whole_aligned_face(self, ctx: WorkerContext) -> None:
        job = portrait_job(ctx, None)
        outcome = generate(ctx, job, ProgressReporter(ctx, job.id))
        engine = engine_of(ctx)
        [crops] = engine.subject_for.call_args.args
        [request] = engine.portraits.call_args.args
        assert request.prompt_prefix == "a handsome man, 25-year-old, "
        assert request.negative_suffix == ", children"
        assert outcome.result_meta["subject"]["source"] == "auto"
        assert outcome.result_meta["subject"]["value"] == "man"
        # FairFace gets the unmasked ArcFace crop, not the background-blacked ID crop.
        with ctx.db.session() as s:
            photo = s.get(Photo, job.params["photo_ids"][0])
            record = photo.faces[0]
        image = np.asarray(Image.open(FACES / "woman_pose1.png").convert("RGB"))
        [crop] = crops
        assert crop.shape == (112, 112, 3)
        assert np.array_equal(crop, align_face(image, Face.from_record(record).landmarks))
        assert not np.array_equal(crop, request.selfies[0])

    def test_no_fairface_means_no_subject(self, ctx: WorkerContext) -> None:
        engine_of(ctx).subject_for.return_value = None
        job = portrait_job(ctx, None)
        outcome = generate(ctx, job, ProgressReporter(ctx, job.id))
        [request] = engine_of(ctx).portraits.call_args.args
        assert (request.prompt_prefix, request.negative_suffix) == ("", "")
        assert outcome.result_meta["subject"] == {"value": None, "source": "none", "prefix": ""}

    def test_unknown_stored_value_falls_back_to_fairface(self, ctx: WorkerContext) -> None:
        job = portrait_job(ctx, None)
        job.params["subject"] = "queen"
        outcome = generate(ctx, job, ProgressReporter(ctx, job.id))
        assert outcome.result_meta["subject"]["source"] == "auto"


def template_job(ctx: WorkerContext, subject: str | None, people: int) -> JobSnapshot:
    with ctx.db.session() as s:
        user = make_user(s, telegram_id=8102, subject=subject)
        names = ["man_pose1.png", "woman_pose2.png"][:people]
        photos = [make_selfie(s, ctx.blobs, user, n) for n in names]
        data = (FACES / "template_group.jpg").read_bytes()
        width, height, faces = face_rows(data)
        template = Photo(
            user_id=user.id,
            kind=PhotoKind.TEMPLATE,
            sha256=ctx.blobs.put(data),
            size_bytes=len(data),
            width=width,
            height=height,
            faces=faces,
        )
        s.add(template)
        s.flush()
        photo_ids = [p.id for p in photos] if people > 1 else [photos[0].id] * 2
        params = {
            "photo_ids": photo_ids,
            "template_id": None,
            "template_photo_id": template.id,
            "faces": [1, 2],
            "seed": 3,
            "subject": subject,
        }
        return JobSnapshot(
            id=2, user_id=user.id, params=params, style_id=None, template_id=None, attempts=1
        )


class TestInpaint:
    def test_one_person_user_choice(self, ctx: WorkerContext) -> None:
        job = template_job(ctx, "girl", people=1)
        outcome = inpaint(ctx, job, ProgressReporter(ctx, job.id))
        engine = engine_of(ctx)
        engine.subject_for.assert_not_called()
        [request] = engine.inpaint.call_args.args
        assert request.prompt_prefix == "a girl, children, "
        assert request.negative_suffix == ""
        assert [m["value"] for m in outcome.result_meta["subject"]] == ["girl", "girl"]

    def test_several_people_each_get_fairface(self, ctx: WorkerContext) -> None:
        engine = engine_of(ctx)
        engine.subject_for.side_effect = [FAIRFACE_SAYS, subject_prompt("woman")]
        job = template_job(ctx, None, people=2)
        outcome = inpaint(ctx, job, ProgressReporter(ctx, job.id))
        assert engine.subject_for.call_count == 2
        [request] = engine.inpaint.call_args.args
        assert [s.subject for s in request.subjects] == ["man", "woman"]
        assert [m["source"] for m in outcome.result_meta["subject"]] == ["auto", "auto"]
