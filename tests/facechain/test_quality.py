"""Selfie quality grading and the bot-facing analyze_selfie()."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facechain.errors import (
    FaceTooSmall,
    ImageTooLarge,
    MultipleFaces,
    NoFace,
    NotAnImage,
    PoorQuality,
)
from facechain.faces import ARCFACE_TEMPLATE_112, Face, default_detector
from facechain.quality import (
    MAX_YAW_DEG,
    SelfieAnalysis,
    analyze_selfie,
    assess_selfie,
    estimate_yaw,
)
from tests.facechain.face_data import (
    GROUP,
    GROUP_FACE_COUNT,
    PORTRAITS,
    encode,
    fixture_bytes,
    fixture_rgb,
    landscape_rgb,
)


def grade(image: np.ndarray) -> list[str]:
    """Quality reasons for the single face of `image`."""
    faces = default_detector().detect_faces(image)
    assert len(faces) == 1
    return assess_selfie(image, faces[0]).reasons


class TestAssess:
    @pytest.mark.parametrize("name", PORTRAITS)
    def test_fixture_portraits_pass(self, name: str) -> None:
        image = fixture_rgb(name)
        face = default_detector().detect_faces(image)[0]
        report = assess_selfie(image, face)
        assert report.ok, report
        assert report.reasons == []
        assert report.face_px == face.size
        assert 0.0 < report.face_fraction < 0.5
        assert abs(report.yaw) < MAX_YAW_DEG

    def test_blurred_fails(self) -> None:
        blurred = cv2.GaussianBlur(fixture_rgb("man_pose1"), (0, 0), 4)
        assert grade(blurred) == ["blurry"]

    def test_tiny_fails(self) -> None:
        tiny = cv2.resize(fixture_rgb("woman_pose2"), (160, 160), interpolation=cv2.INTER_AREA)
        assert "face_too_small" in grade(tiny)

    def test_dark_fails(self) -> None:
        dark = (fixture_rgb("woman_pose1") * 0.2).astype(np.uint8)
        assert "too_dark" in grade(dark)

    def test_overexposed_fails(self) -> None:
        bright = np.clip(fixture_rgb("man_pose2").astype(int) + 150, 0, 255).astype(np.uint8)
        assert "too_bright" in grade(bright)

    def test_turned_face_fails(self) -> None:
        image = fixture_rgb("man_pose1")
        face = default_detector().detect_faces(image)[0]
        marks = face.landmarks.copy()
        marks[2, 0] = marks[1, 0] - 2.0  # nose tip almost under the far eye: a profile view
        report = assess_selfie(image, Face(box=face.box, landmarks=marks, score=face.score))
        assert "face_turned" in report.reasons

    def test_yaw_estimate(self) -> None:
        assert estimate_yaw(ARCFACE_TEMPLATE_112) == pytest.approx(0.0, abs=2.0)
        turned = ARCFACE_TEMPLATE_112.copy()
        turned[2, 0] = turned[0, 0]
        assert estimate_yaw(turned) == pytest.approx(-90.0)


class TestAnalyzeSelfie:
    def test_portrait(self) -> None:
        analysis = analyze_selfie(fixture_bytes("woman_pose1"))
        assert (analysis.width, analysis.height) == (512, 512)
        assert len(analysis.faces) == 1
        assert analysis.quality is not None
        assert analysis.quality.ok
        assert analysis.require_single() is analysis.faces[0]

    def test_group_is_not_an_error_until_required(self) -> None:
        analysis = analyze_selfie(fixture_bytes(GROUP))
        assert len(analysis.faces) == GROUP_FACE_COUNT
        with pytest.raises(MultipleFaces) as info:
            analysis.require_single()
        assert len(info.value.boxes) == GROUP_FACE_COUNT

    def test_no_face(self) -> None:
        analysis = analyze_selfie(encode(landscape_rgb(), "JPEG"))
        assert analysis.faces == []
        assert analysis.quality is None
        with pytest.raises(NoFace):
            analysis.require_single()

    def test_poor_quality(self) -> None:
        blurred = cv2.GaussianBlur(fixture_rgb("woman_pose3"), (0, 0), 5)
        analysis = analyze_selfie(encode(blurred))
        with pytest.raises(PoorQuality, match="blurry"):
            analysis.require_single()

    def test_min_face_px_in_original_pixels(self) -> None:
        analysis = analyze_selfie(fixture_bytes("man_pose1"), min_face_px=150)
        with pytest.raises(FaceTooSmall):
            analysis.require_single()

    def test_large_upload_reports_original_pixels(self) -> None:
        big = cv2.resize(fixture_rgb("man_pose3"), (2600, 2600), interpolation=cv2.INTER_CUBIC)
        analysis = analyze_selfie(encode(big, "JPEG", quality=90))
        assert (analysis.width, analysis.height) == (2600, 2600)
        face = analysis.require_single()
        small = default_detector().detect_faces(fixture_rgb("man_pose3"))[0]
        assert face.box[0] == pytest.approx(small.box[0] * 2600 / 512, rel=0.08)
        assert analysis.quality is not None
        assert analysis.quality.face_px == pytest.approx(face.size, rel=0.01)

    def test_bad_bytes(self) -> None:
        with pytest.raises(NotAnImage):
            analyze_selfie(b"not an image")
        with pytest.raises(ImageTooLarge):
            analyze_selfie(fixture_bytes("man_pose1"), max_bytes=100)
        with pytest.raises(ImageTooLarge):
            analyze_selfie(fixture_bytes("man_pose1"), max_pixels=100_000)

    def test_dataclass_defaults(self) -> None:
        with pytest.raises(NoFace):
            SelfieAnalysis(width=10, height=10).require_single()
