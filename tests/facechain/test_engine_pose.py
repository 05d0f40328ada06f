"""Pose photos on the engine: the lazily built OpenPose annotator and `Engine.extract_pose`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facechain.engine import Engine, EngineConfig, pose_pad
from facechain.errors import NoPersonInPose, PoseAnnotatorMissing
from tests.facechain.face_data import GROUP, fixture_rgb
from tests.utils.fake_pose import FakePoseAnnotator


def bare_engine(profile: str = "tiny", models_dir: Path = Path("data/models")) -> Engine:
    """An engine with no networks loaded: enough for everything pose-related."""
    config = EngineConfig(profile=profile, models_dir=models_dir, device="cpu")  # type: ignore[arg-type]
    return Engine(config, torch.nn.Identity(), None, None)  # type: ignore[arg-type]


class TestAnnotatorLifecycle:
    def test_built_once_on_first_use(self, monkeypatch: pytest.MonkeyPatch) -> None:
        built: list[int] = []
        fake = FakePoseAnnotator()

        def load(self: Engine) -> FakePoseAnnotator:
            built.append(1)
            return fake

        monkeypatch.setattr(Engine, "_load_pose_annotator", load)
        engine = bare_engine()
        assert built == []
        assert engine.pose_annotator() is fake
        assert engine.pose_annotator() is fake
        assert built == [1]

    def test_missing_weights_warn_once_and_refuse_photos(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        engine = bare_engine("real", tmp_path)
        with caplog.at_level(logging.WARNING, logger="facechain.engine"):
            assert engine.pose_annotator() is None
            assert engine.pose_annotator() is None
            with pytest.raises(PoseAnnotatorMissing, match="models download") as info:
                engine.extract_pose(Image.fromarray(fixture_rgb("man_pose1")))
        assert info.value.code == "pose_annotator_missing"
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "openpose annotator weights missing" in warnings[0]
        assert "5-landmark keypoints" in warnings[0]

    def test_tiny_profile_has_a_random_annotator_that_finds_nobody(self) -> None:
        from facechain.annotators.openpose import OpenposeAnnotator

        torch.set_num_threads(1)
        engine = bare_engine()
        assert isinstance(engine.pose_annotator(), OpenposeAnnotator)
        # The end-to-end tests rely on this: a pose photo on the tiny profile finds nobody.
        with pytest.raises(NoPersonInPose):
            engine.extract_pose(Image.fromarray(fixture_rgb("man_pose3")))


class TestExtractPose:
    def test_padded_as_facechain_body_and_hands(self) -> None:
        engine = bare_engine()
        fake = FakePoseAnnotator()
        engine.set_pose_annotator(fake)  # type: ignore[arg-type]
        photo = Image.fromarray(fixture_rgb(GROUP))
        assert photo.size == (1680, 1260)

        extraction = engine.extract_pose(photo)

        [call] = fake.calls
        assert call["include_body"]
        assert call["include_hand"]
        assert not call["include_face"]
        assert call["shape"] == (512, 512, 3)
        assert np.array_equal(call["image"], np.asarray(pose_pad(photo, 512)))
        # FaceChain's img_pad: a wide photo sits on the bottom edge, padded on top only.
        assert call["image"][:120].max() == 0
        assert call["image"][-20:].max() > 0
        assert call["image"][256].max() > 0
        assert extraction.people == 1
        assert extraction.map.size == (512, 512)
        assert extraction.map.mode == "RGB"
        assert np.array_equal(np.asarray(extraction.map), fake.body_map)

    def test_counts_people(self) -> None:
        engine = bare_engine()
        engine.set_pose_annotator(FakePoseAnnotator(people=3))  # type: ignore[arg-type]
        assert engine.extract_pose(Image.fromarray(fixture_rgb("man_pose1"))).people == 3

    def test_nobody_is_refused(self) -> None:
        engine = bare_engine()
        engine.set_pose_annotator(FakePoseAnnotator(people=0))  # type: ignore[arg-type]
        with pytest.raises(NoPersonInPose) as info:
            engine.extract_pose(Image.fromarray(fixture_rgb("man_pose1")))
        assert info.value.code == "pose_no_person"

    def test_set_to_none_means_missing(self) -> None:
        engine = bare_engine()
        engine.set_pose_annotator(None)
        assert engine.pose_annotator() is None
        with pytest.raises(PoseAnnotatorMissing):
            engine.extract_pose(Image.new("RGB", (64, 64)))
