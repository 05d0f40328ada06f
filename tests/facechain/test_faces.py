"""YuNet detection, ArcFace alignment, head masks and single-face selection on real photos."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from facechain.errors import FaceTooSmall, MultipleFaces, NoFace, WeightsMissing
from facechain.faces import (
    ARCFACE_TEMPLATE_112,
    Face,
    FaceDetector,
    align_face,
    alignment_matrix,
    default_detector,
    head_mask,
    select_single_face,
    similarity_transform,
)
from tests.facechain.face_data import (
    GROUP,
    GROUP_FACE_COUNT,
    PORTRAITS,
    fixture_rgb,
    landscape_rgb,
)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return default_detector()


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (N, 2) points."""
    return np.asarray(points @ matrix[:, :2].T + matrix[:, 2], dtype=np.float64)


def fake_face(x: float, y: float, w: float, h: float) -> Face:
    """A face whose landmarks sit at the template's place inside the box."""
    marks = ARCFACE_TEMPLATE_112 / 112.0 * np.array([w, h], np.float32) + np.array([x, y])
    return Face(box=(x, y, w, h), landmarks=marks.astype(np.float32), score=0.9)


class TestDetect:
    @pytest.mark.parametrize("name", PORTRAITS)
    def test_portrait_has_one_plausible_face(self, detector: FaceDetector, name: str) -> None:
        faces = detector.detect_faces(fixture_rgb(name))
        assert len(faces) == 1
        face = faces[0]
        assert face.score > 0.8
        assert face.landmarks.shape == (5, 2)
        assert face.landmarks.dtype == np.float32
        left_eye, right_eye, nose, mouth_l, mouth_r = face.landmarks
        assert left_eye[0] < right_eye[0]
        assert mouth_l[0] < mouth_r[0]
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_l[1], mouth_r[1])
        x, y, w, h = face.box
        assert 80 < w < 300
        assert (face.landmarks[:, 0] > x).all()
        assert (face.landmarks[:, 0] < x + w).all()
        assert (face.landmarks[:, 1] > y).all()
        assert (face.landmarks[:, 1] < y + h).all()

    def test_group_faces_sorted_left_to_right(self, detector: FaceDetector) -> None:
        faces = detector.detect_faces(fixture_rgb(GROUP))
        assert len(faces) == GROUP_FACE_COUNT
        xs = [f.box[0] for f in faces]
        assert xs == sorted(xs)
        # Bride's face left of centre, groom's right of it (1680 px wide photo).
        assert faces[0].center[0] < 840 < faces[1].center[0]

    def test_no_face_in_landscape(self, detector: FaceDetector) -> None:
        assert detector.detect_faces(landscape_rgb()) == []

    def test_no_face_in_crop_without_head(self, detector: FaceDetector) -> None:
        # The suit below the man's chin.
        suit = np.ascontiguousarray(fixture_rgb("man_pose1")[240:, :])
        assert detector.detect_faces(suit) == []

    def test_large_image_scaled_back(self, detector: FaceDetector) -> None:
        group = fixture_rgb(GROUP)
        big = cv2.resize(group, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_LINEAR)
        small_faces = detector.detect_faces(group)
        big_faces = detector.detect_faces(big)
        assert len(big_faces) == len(small_faces)
        for s, b in zip(small_faces, big_faces, strict=True):
            assert np.allclose(np.asarray(b.box), 2 * np.asarray(s.box), atol=30)
            assert np.abs(b.landmarks - 2 * s.landmarks).max() < 20

    def test_close_up_selfie(self, detector: FaceDetector) -> None:
        # Face filling a 1000 px frame: YuNet alone misses or mis-boxes it at full size.
        crop = fixture_rgb("man_pose1")[55:215, 190:340]
        close = cv2.resize(crop, (940, 1000), interpolation=cv2.INTER_CUBIC)
        faces = detector.detect_faces(close)
        assert len(faces) == 1
        assert faces[0].box[2] > 500

    def test_small_face(self, detector: FaceDetector) -> None:
        tiny = cv2.resize(fixture_rgb("woman_pose1"), (96, 96), interpolation=cv2.INTER_AREA)
        faces = detector.detect_faces(tiny)
        assert len(faces) == 1
        assert faces[0].size < 30

    def test_small_faces_in_large_image(self, detector: FaceDetector) -> None:
        # Four 80 px portraits on a 2400 px canvas: faces ~17 px wide, found by the fine pass.
        canvas = landscape_rgb(2400, 1200)
        for i, name in enumerate(PORTRAITS[:2] + PORTRAITS[3:5]):
            small = cv2.resize(fixture_rgb(name), (128, 128), interpolation=cv2.INTER_AREA)
            canvas[500:628, 300 + 500 * i : 428 + 500 * i] = small
        faces = detector.detect_faces(canvas)
        assert len(faces) == 4
        assert [round(f.center[0], -2) // 500 for f in faces] == [0, 1, 2, 3]

    def test_thread_safe(self, detector: FaceDetector) -> None:
        images = [fixture_rgb(n) for n in PORTRAITS] * 2
        expected = [[f.box for f in detector.detect_faces(im)] for im in images]
        with ThreadPoolExecutor(max_workers=4) as pool:
            got = list(pool.map(lambda im: [f.box for f in detector.detect_faces(im)], images))
        assert got == expected

    def test_rejects_non_rgb(self, detector: FaceDetector) -> None:
        with pytest.raises(ValueError, match="RGB"):
            detector.detect_faces(np.zeros((10, 10), np.uint8))

    def test_missing_weights(self, tmp_path: object) -> None:
        with pytest.raises(WeightsMissing):
            FaceDetector(model_path="/nonexistent/yunet.onnx")

    def test_face_geometry_helpers(self) -> None:
        face = fake_face(10, 20, 100, 120)
        assert face.size == 100
        assert face.center == (60, 80)
        moved = face.shifted(10, 20).scaled(2.0)
        assert moved.box == (0, 0, 200, 240)
        assert moved.yunet_row().shape == (15,)


class TestAlign:
    def test_exact_similarity_recovered(self) -> None:
        angle, scale, shift = np.deg2rad(17.0), 2.3, np.array([140.0, -35.0])
        rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        marks = ARCFACE_TEMPLATE_112 @ rot.T + shift
        matrix = alignment_matrix(marks)
        assert np.abs(apply(matrix, marks) - ARCFACE_TEMPLATE_112).max() < 1e-3

    def test_similarity_transform_validates(self) -> None:
        with pytest.raises(ValueError):
            similarity_transform(np.zeros((5, 2)), np.zeros((4, 2)))

    @pytest.mark.parametrize("name", PORTRAITS)
    def test_real_landmarks_land_on_template(self, detector: FaceDetector, name: str) -> None:
        image = fixture_rgb(name)
        face = detector.detect_faces(image)[0]
        mapped = apply(alignment_matrix(face.landmarks), face.landmarks)
        # Least squares: the centroids coincide; eyes land within 2 px, mouth corners within 4;
        # the nose moves with head yaw (up to 6 px at ~25 deg on man_pose2).
        error = np.abs(mapped - ARCFACE_TEMPLATE_112).max(axis=1)
        assert np.abs(mapped.mean(0) - ARCFACE_TEMPLATE_112.mean(0)).max() < 1.0
        assert error[[0, 1]].max() < 2.0
        assert error[[3, 4]].max() < 4.0
        assert error[2] < 8.0
        aligned = align_face(image, face.landmarks)
        assert aligned.shape == (112, 112, 3)
        assert aligned.dtype == np.uint8

    def test_warped_photo_redetected_consistently(self, detector: FaceDetector) -> None:
        image = fixture_rgb("woman_pose1")
        face = detector.detect_faces(image)[0]
        matrix = cv2.getRotationMatrix2D((256, 256), 10.0, 1.0)
        warped = cv2.warpAffine(image, matrix, (512, 512))
        faces = detector.detect_faces(warped)
        assert len(faces) == 1
        expected = apply(matrix, face.landmarks)
        # The int8 YuNet's landmark jitter on a resampled photo is ~3 % of the face size.
        error = np.abs(faces[0].landmarks - expected)
        assert error.mean() < 0.05 * face.size
        assert error.max() < 0.1 * face.size

    def test_border_is_black(self) -> None:
        # A face running off the bottom-right of a 60 px image.
        image = np.full((60, 60, 3), 200, np.uint8)
        aligned = align_face(image, fake_face(20, 20, 80, 80).landmarks)
        assert tuple(aligned[111, 111]) == (0, 0, 0)
        assert tuple(aligned[20, 20]) == (200, 200, 200)


class TestHeadMask:
    @pytest.mark.parametrize("name", ["man_pose1", "woman_pose3"])
    def test_covers_head_only(self, detector: FaceDetector, name: str) -> None:
        image = fixture_rgb(name)
        face = detector.detect_faces(image)[0]
        mask = head_mask(image, face)
        assert mask.shape == image.shape[:2]
        assert mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 255}
        for x, y in face.landmarks:
            assert mask[round(y), round(x)] == 255
        x, y, w, h = face.int_box()
        # Hair above the box is included, the frame corners and the chest are not.
        assert mask[max(0, y - h // 8), x + w // 2] == 255
        assert mask[0, 0] == mask[-1, -1] == mask[-1, 0] == 0
        assert mask[min(511, y + 2 * h), x + w // 2] == 0
        area = (mask > 0).sum()
        assert w * h < area < 4 * w * h


class TestSelect:
    def test_single(self) -> None:
        face = fake_face(100, 100, 120, 150)
        assert select_single_face([face], (512, 512)) is face

    def test_none(self) -> None:
        with pytest.raises(NoFace):
            select_single_face([], (512, 512))

    def test_group_is_multiple(self, detector: FaceDetector) -> None:
        faces = detector.detect_faces(fixture_rgb(GROUP))
        with pytest.raises(MultipleFaces) as info:
            select_single_face(faces, (1680, 1260))
        assert len(info.value.boxes) == GROUP_FACE_COUNT
        assert info.value.code == "multiple_faces"

    def test_background_bystander_ignored(self) -> None:
        subject = fake_face(100, 100, 200, 240)
        bystander = fake_face(400, 50, 40, 48)
        assert select_single_face([bystander, subject], (600, 400)) is subject

    def test_too_small(self) -> None:
        with pytest.raises(FaceTooSmall):
            select_single_face([fake_face(10, 10, 30, 36)], (512, 512))
        assert select_single_face([fake_face(10, 10, 30, 36)], (512, 512), min_face_px=20)

    def test_boxes_clipped(self) -> None:
        faces = [fake_face(-20, 10, 100, 100), fake_face(150, 10, 100, 100)]
        with pytest.raises(MultipleFaces) as info:
            select_single_face(faces, (200, 200))
        assert info.value.boxes == [(0, 10, 80, 100), (150, 10, 50, 100)]
