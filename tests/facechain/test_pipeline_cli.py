"""`python -m facechain portrait` end to end on the tiny profile with a real fixture selfie."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facechain.annotators.openpose import BodyResult, Keypoint, PoseResult, draw_poses
from facechain.cli import run_portrait_cli
from facechain.engine import id_crop
from facechain.faces import default_detector, select_single_face
from tests.facechain.face_data import FACES_DIR, fixture_rgb
from tests.facechain.openpose_data import STANDING


def standing_person() -> PoseResult:
    """A whole standing body, as the annotator reports one."""
    keypoints: list[Keypoint | None] = [Keypoint(*STANDING[i]) for i in range(18)]
    return PoseResult(BodyResult(keypoints, 18.0, 18), None, None, None)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are all per-op overhead: one thread avoids OpenMP syncs (and load spikes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TestPortraitCli:
    def test_writes_ranked_portraits(self, tmp_path: Path) -> None:
        out = tmp_path / "out"
        skeleton = tmp_path / "skeleton.png"
        Image.fromarray(draw_poses([standing_person()], 512, 512)).save(skeleton)
        code = run_portrait_cli(
            [
                str(FACES_DIR / "man_pose1.png"),
                "--out",
                str(out),
                "--profile",
                "tiny",
                "--num",
                "2",
                "--candidates",
                "3",
                "--seed",
                "11",
                "--steps",
                "2",
                "--style-prompt",
                "armor",
                "--base",
                "majic",
                "--pose",
                str(skeleton),
                "--subject",
                "woman",
            ]
        )
        assert code == 0
        files = sorted(out.glob("*.png"))
        assert len(files) == 2
        assert all(Image.open(f).size == (64, 64) for f in files)
        assert all("_seed1" in f.name for f in files)

    def test_pose_photo_without_person_is_a_typed_failure(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # The tiny profile's random annotator finds nobody in a real photo.
        code = run_portrait_cli(
            [
                str(FACES_DIR / "man_pose1.png"),
                "--out",
                str(tmp_path / "o"),
                "--profile",
                "tiny",
                "--pose",
                str(FACES_DIR / "woman_pose2.png"),
            ]
        )
        assert code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["error [pose_no_person]: no person found in the pose photo"]
        assert not (tmp_path / "o").exists()

    def test_no_face_is_a_typed_failure(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        blank = tmp_path / "blank.png"
        buf = io.BytesIO()
        Image.new("RGB", (256, 256), (90, 120, 200)).save(buf, format="PNG")
        blank.write_bytes(buf.getvalue())
        code = run_portrait_cli([str(blank), "--out", str(tmp_path / "o"), "--profile", "tiny"])
        assert code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert err[0].startswith("error [no_face]")
        assert not (tmp_path / "o").exists()


def test_id_crop_is_aligned_and_masked() -> None:
    rgb = fixture_rgb("woman_pose1")
    face = select_single_face(default_detector().detect_faces(rgb), (rgb.shape[1], rgb.shape[0]))
    out = id_crop(rgb, face)
    assert out.shape == (112, 112, 3)
    assert out.dtype == np.uint8
    # Background outside the head ellipse is black; the face centre is not.
    assert out[56, 56].sum() > 0
    assert out[0, 0].sum() == 0
    assert out[0, 111].sum() == 0
