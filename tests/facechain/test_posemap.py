"""Ready OpenPose skeleton maps told apart from photos, drawings and empty images."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from facechain.posemap import is_skeleton_map
from tests.facechain.face_data import FACES_DIR as FACES
from tests.facechain.face_data import fixture_rgb, landscape_rgb
from tests.utils.fake_pose import ARMS_UP, STANDING, face_dots_map, pose_result, skeleton_map


def jpeg(image: np.ndarray, quality: int) -> Image.Image:
    """What Telegram makes of a photo: JPEG with 4:2:0 chroma subsampling."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality, subsampling=2)
    return Image.open(io.BytesIO(buf.getvalue()))


class TestSkeletonMaps:
    @pytest.mark.parametrize("points", [STANDING, ARMS_UP])
    def test_drawn_maps(self, points: tuple[tuple[float, float], ...]) -> None:
        drawn = skeleton_map(points)
        assert is_skeleton_map(drawn)
        assert is_skeleton_map(Image.fromarray(drawn))
        assert is_skeleton_map(Image.fromarray(drawn).convert("RGBA"))

    @pytest.mark.parametrize("quality", [90, 60, 35])
    def test_survives_telegram_jpeg(self, quality: int) -> None:
        assert is_skeleton_map(jpeg(skeleton_map(), quality))

    def test_other_sizes_and_shapes(self) -> None:
        drawn = skeleton_map()
        assert is_skeleton_map(cv2.resize(drawn, (256, 256), interpolation=cv2.INTER_AREA))
        assert is_skeleton_map(cv2.resize(drawn, (1280, 1280), interpolation=cv2.INTER_LINEAR))
        assert is_skeleton_map(skeleton_map(size=(768, 512)))
        assert is_skeleton_map(np.maximum(drawn, face_dots_map()))

    def test_skeleton_drawn_by_the_annotator(self) -> None:
        from facechain.annotators.openpose import draw_poses

        drawn = np.asarray(draw_poses([pose_result(ARMS_UP)], 512, 512))
        assert is_skeleton_map(drawn)


class TestNotMaps:
    @pytest.mark.parametrize("name", sorted(p.stem for p in FACES.glob("*.png")))
    def test_photos_of_people(self, name: str) -> None:
        photo = fixture_rgb(name)
        assert not is_skeleton_map(photo)
        assert not is_skeleton_map(jpeg(photo, 70))

    def test_group_photo_and_landscape(self) -> None:
        assert not is_skeleton_map(Image.open(FACES / "template_group.jpg"))
        assert not is_skeleton_map(landscape_rgb())

    def test_dark_photo(self) -> None:
        night = (fixture_rgb("man_pose1").astype(np.float32) * 0.15).astype(np.uint8)
        assert not is_skeleton_map(night)

    def test_black_and_almost_black(self) -> None:
        black = np.zeros((512, 512, 3), np.uint8)
        assert not is_skeleton_map(black)
        specks = black.copy()
        specks[100:103, 100:103] = (255, 0, 0)
        assert not is_skeleton_map(specks)

    def test_drawing_on_white(self) -> None:
        paper = np.full((512, 512, 3), 255, np.uint8)
        inverted = 255 - skeleton_map()
        assert not is_skeleton_map(np.minimum(paper, inverted))
        cv2.line(paper, (40, 40), (400, 460), (0, 0, 0), 3)
        assert not is_skeleton_map(paper)

    def test_black_with_text_or_one_shape(self) -> None:
        text = np.zeros((512, 512, 3), np.uint8)
        cv2.putText(text, "POSE", (60, 280), cv2.FONT_HERSHEY_SIMPLEX, 4, (255, 255, 255), 10)
        assert not is_skeleton_map(text)
        square = np.zeros((512, 512, 3), np.uint8)
        cv2.rectangle(square, (100, 100), (220, 220), (255, 0, 0), -1)
        assert not is_skeleton_map(square)

    def test_colourful_noise_on_black(self) -> None:
        rng = np.random.default_rng(0)
        noise = np.zeros((512, 512, 3), np.uint8)
        noise[200:300, 200:300] = rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)
        assert not is_skeleton_map(noise)
