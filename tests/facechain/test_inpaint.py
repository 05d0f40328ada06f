"""Fixed-template inpainting: template analysis, geometry, control maps, tiny-profile runs."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from facechain.engine import Engine, EngineConfig, id_crop
from facechain.errors import (
    Cancelled,
    FaceIndexOutOfRange,
    FaceTooSmall,
    FeatureUnavailable,
    TooFewTemplateFaces,
)
from facechain.faces import Face, default_detector
from facechain.inpaint import (
    InpaintRequest,
    SquareCrop,
    TemplateAnalysis,
    TemplateInpainter,
    analyze_template,
    canny_map,
    fix_drift,
    inpaint_template,
    paste_alpha,
)
from facechain.openpose import draw_face_pose, face_keypoints, face_region_mask
from tests.facechain.face_data import (
    GROUP,
    GROUP_FACE_COUNT,
    encode,
    fixture_bytes,
    fixture_rgb,
    landscape_rgb,
)
from tests.utils.fake_pose import FakePoseAnnotator


@pytest.fixture(scope="module")
def template() -> np.ndarray:
    return fixture_rgb(GROUP)


@pytest.fixture(scope="module")
def analysis(template: np.ndarray) -> TemplateAnalysis:
    return analyze_template(template)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    # Tiny models are per-op overhead: extra intra-op threads only spin (badly so on a busy box).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = Engine.from_config(EngineConfig(profile="tiny", steps=2))
    # The 5-landmark fallback; the annotator path has its own tests (TestAnnotatorControls).
    engine.set_pose_annotator(None)
    yield engine
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    """Aligned ID crops of the man and the woman."""
    out = []
    for name in ("man_pose1", "woman_pose1"):
        image = fixture_rgb(name)
        out.append(id_crop(image, default_detector().detect_faces(image)[0]))
    return out


def box_region(face: Face, image: np.ndarray) -> np.ndarray:
    """Pixels of a face box."""
    x, y, w, h = face.int_box()
    return image[y : y + h, x : x + w]


class TestTemplateAnalysis:
    def test_faces_found_and_ordered(self) -> None:
        analysis = analyze_template(fixture_bytes(GROUP))
        assert (analysis.width, analysis.height) == (1680, 1260)
        assert analysis.count == GROUP_FACE_COUNT
        xs = [b[0] for b in analysis.boxes]
        assert xs == sorted(xs)
        assert analysis.faces[0].center[0] < 840 < analysis.faces[1].center[0]

    def test_accepts_pil_and_array(self, template: np.ndarray) -> None:
        assert analyze_template(Image.fromarray(template)).count == GROUP_FACE_COUNT

    def test_select(self, analysis: TemplateAnalysis) -> None:
        assert analysis.select([2]) == [analysis.faces[1]]
        assert analysis.select([2, 1]) == [analysis.faces[1], analysis.faces[0]]

    def test_num_faces_keeps_largest(self, analysis: TemplateAnalysis) -> None:
        largest = max(analysis.faces, key=lambda f: f.area)
        assert analysis.kept_faces(1) == [largest]
        assert analysis.select([1], num_faces=1) == [largest]

    def test_index_out_of_range(self, analysis: TemplateAnalysis) -> None:
        with pytest.raises(FaceIndexOutOfRange, match="faces 1 to 2") as info:
            analysis.select([3])
        assert info.value.code == "face_index_out_of_range"
        assert (info.value.index, info.value.available) == (3, 2)
        with pytest.raises(FaceIndexOutOfRange):
            analysis.select([0])
        with pytest.raises(FaceIndexOutOfRange):
            analysis.select([2], num_faces=1)

    def test_too_few_faces(self, analysis: TemplateAnalysis) -> None:
        with pytest.raises(TooFewTemplateFaces, match="2 face") as info:
            analysis.select([1], num_faces=3)
        assert (info.value.found, info.value.needed) == (2, 3)

    def test_faceless_template(self) -> None:
        analysis = analyze_template(encode(landscape_rgb(), "JPEG"))
        assert analysis.count == 0
        with pytest.raises(TooFewTemplateFaces, match="no face"):
            analysis.select([1])

    def test_face_too_small(self, template: np.ndarray) -> None:
        small = cv2.resize(template, (280, 210), interpolation=cv2.INTER_AREA)
        analysis = analyze_template(small)
        assert analysis.count == GROUP_FACE_COUNT
        with pytest.raises(FaceTooSmall, match="template face 1"):
            analysis.select([1])

    def test_duplicate_index(self, analysis: TemplateAnalysis) -> None:
        with pytest.raises(ValueError, match="repeat"):
            analysis.select([1, 1])


class TestGeometry:
    def test_square_crop_face_ratio(self, analysis: TemplateAnalysis) -> None:
        face = analysis.faces[0]
        window = SquareCrop.around(face)
        assert max(face.box[2], face.box[3]) / window.side == pytest.approx(0.7, abs=0.01)
        cx, cy = face.center
        assert window.x0 + window.side / 2 == pytest.approx(cx, abs=1)
        assert window.y0 + window.side / 2 == pytest.approx(cy, abs=1)

    def test_extract_pads_outside(self) -> None:
        image = np.full((100, 100, 3), 7, np.uint8)
        window = SquareCrop(x0=-10, y0=80, side=40)
        patch = window.extract(image)
        assert patch.shape == (40, 40, 3)
        assert (patch[:20, 10:] == 7).all()
        assert (patch[:, :10] == 0).all()
        assert (patch[20:] == 0).all()

    def test_blend_leaves_zero_alpha_untouched(self) -> None:
        rng = np.random.default_rng(0)
        image = rng.integers(0, 255, (60, 60, 3), dtype=np.uint8)
        before = image.copy()
        window = SquareCrop(x0=50, y0=-5, side=20)
        alpha = np.zeros((20, 20), np.float32)
        alpha[5:10, 2:6] = 0.5
        alpha[12:, :] = 1.0
        window.blend(image, np.full((20, 20, 3), 255, np.uint8), alpha)
        changed = (image != before).any(-1)
        expected = np.zeros((60, 60), bool)
        expected[0:5, 52:56] = True
        expected[7:15, 50:60] = True
        assert not (changed & ~expected).any()
        assert (image[7:15, 50:60] == 255).all()

    def test_paste_alpha_is_feathered_and_bounded(self) -> None:
        edit = np.zeros((64, 64), np.uint8)
        edit[24:40, 24:40] = 255
        alpha = paste_alpha(edit, 512)
        assert alpha.shape == (512, 512)
        assert alpha[256, 256] == 1.0
        assert 0.0 < alpha[256, 330] < 1.0
        assert (alpha[:100] == 0).all()
        assert (alpha[:, :100] == 0).all()

    def test_to_window(self) -> None:
        window = SquareCrop(x0=100, y0=50, side=200)
        points = window.to_window(np.array([[100.0, 50.0], [300.0, 250.0]]), 64)
        assert np.allclose(points, [[0, 0], [64, 64]])


class TestControlMaps:
    def test_keypoints_keep_landmarks(self) -> None:
        image = fixture_rgb("man_pose1")
        face = default_detector().detect_faces(image)[0]
        points = face_keypoints(face.landmarks)
        assert points.shape == (70, 2)
        assert np.allclose(points[[68, 69, 30, 48, 54]], face.landmarks, atol=1e-4)
        x, _, w, _ = face.box
        assert (points[:, 0] > x - 0.3 * w).all()
        assert (points[:, 0] < x + 1.3 * w).all()
        # Chin (8) below the mouth, brows (17-26) above the eyes.
        assert points[8, 1] > face.landmarks[3:, 1].max()
        assert points[17:27, 1].max() < face.landmarks[:2, 1].min() + 2

    def test_pose_map_and_face_mask(self) -> None:
        image = fixture_rgb("man_pose1")
        face = default_detector().detect_faces(image)[0]
        points = face_keypoints(face.landmarks)
        pose = draw_face_pose((512, 512), [points])
        assert pose.shape == (512, 512, 3)
        assert set(np.unique(pose)) == {0, 255}
        for x, y in points.astype(int):
            assert (pose[y, x] == 255).all()
        assert pose[:40].max() == 0
        mask = face_region_mask((512, 512), points)
        for x, y in face.landmarks.astype(int):
            assert mask[y, x] == 255
        assert mask[0, 0] == mask[500, 256] == 0

    def test_canny_cleared(self) -> None:
        image = fixture_rgb("man_pose1")
        clear = np.zeros((512, 512), np.uint8)
        clear[:, :256] = 255
        edges = canny_map(image, clear)
        assert edges.shape == (512, 512, 3)
        assert edges[:, :256].max() == 0
        assert edges[:, 256:].max() == 255

    def test_fix_drift_restores_outside(self) -> None:
        rng = np.random.default_rng(1)
        source = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        roundtrip = np.clip(source.astype(int) + 9, 0, 255).astype(np.uint8)
        result = roundtrip.copy()
        result[28:36, 28:36] = 0
        mask = np.zeros((64, 64), np.uint8)
        mask[28:36, 28:36] = 255
        fixed = fix_drift(result, source, roundtrip, mask)
        assert (fixed[28:36, 28:36] == 0).all()
        assert np.array_equal(fixed[:10], source[:10])


class TestInpaintTiny:
    def test_one_face_changes_only_its_region(
        self,
        engine: Engine,
        template: np.ndarray,
        analysis: TemplateAnalysis,
        crops: list[np.ndarray],
    ) -> None:
        steps: list[tuple[int, int]] = []
        result = TemplateInpainter.of(engine).run(
            InpaintRequest(template=template, selfies=[crops[0]], faces=[2], seed=3),
            progress=lambda done, total: steps.append((done, total)),
        )
        out = np.asarray(result.image)
        assert out.shape == template.shape
        changed = (out != template).any(-1)
        blend = result.blend_masks[0]
        assert blend.shape == template.shape[:2]
        # Every pixel outside the blend mask is byte-identical to the template.
        assert not (changed & (blend == 0)).any()
        groom, bride = analysis.faces[1], analysis.faces[0]
        assert (box_region(groom, changed)).mean() > 0.3
        assert np.array_equal(box_region(bride, out), box_region(bride, template))
        ys, xs = np.nonzero(changed)
        window = SquareCrop.around(groom)
        assert xs.min() >= window.x0
        assert xs.max() < window.x0 + window.side
        assert ys.min() >= window.y0
        assert ys.max() < window.y0 + window.side
        assert steps[-1][0] == steps[-1][1]
        assert [d for d, _ in steps] == list(range(1, len(steps) + 1))

    def test_two_identities(
        self,
        engine: Engine,
        template: np.ndarray,
        analysis: TemplateAnalysis,
        crops: list[np.ndarray],
    ) -> None:
        result = TemplateInpainter.of(engine).run(
            InpaintRequest(
                template=Image.fromarray(template),
                identities=[[crops[1]], [crops[0]]],
                faces=[1, 2],
                seed=5,
                analysis=analysis,
            )
        )
        out = np.asarray(result.image)
        changed = (out != template).any(-1)
        union = np.maximum(*result.blend_masks)
        assert not (changed & (union == 0)).any()
        for face in analysis.faces:
            assert box_region(face, changed).mean() > 0.3
        assert changed.mean() < 0.15

    def test_seeded_runs_repeat(
        self, engine: Engine, template: np.ndarray, crops: list[np.ndarray]
    ) -> None:
        first = inpaint_template(engine, template, [[crops[0]]], [1], seed=11)
        second = inpaint_template(engine, template, [[crops[0]]], [1], seed=11)
        assert first.size == (1680, 1260)
        assert np.array_equal(np.asarray(first), np.asarray(second))

    def test_engine_entry_point(
        self, engine: Engine, template: np.ndarray, crops: list[np.ndarray]
    ) -> None:
        image = engine.inpaint(
            InpaintRequest(template=Image.fromarray(template), selfies=[crops[0]], faces=[1])
        )
        assert isinstance(image, Image.Image)
        assert image.size == (1680, 1260)

    def test_cancel(self, engine: Engine, template: np.ndarray, crops: list[np.ndarray]) -> None:
        calls = []

        def cancel() -> bool:
            calls.append(1)
            return len(calls) > 2

        with pytest.raises(Cancelled):
            engine.inpaint(
                InpaintRequest(template=template, selfies=[crops[0]], faces=[2]), cancel=cancel
            )

    def test_bad_requests(
        self, engine: Engine, template: np.ndarray, crops: list[np.ndarray]
    ) -> None:
        with pytest.raises(FaceIndexOutOfRange):
            engine.inpaint(InpaintRequest(template=template, selfies=[crops[0]], faces=[3]))
        with pytest.raises(TooFewTemplateFaces):
            engine.inpaint(InpaintRequest(template=landscape_rgb(), selfies=[crops[0]]))
        with pytest.raises(FeatureUnavailable, match="face fusion"):
            engine.inpaint(InpaintRequest(template=template, selfies=[crops[0]], face_fusion=True))
        with pytest.raises(ValueError, match="identities"):
            engine.inpaint(
                InpaintRequest(template=template, identities=[[crops[0]]], faces=[1, 2])
            )
        with pytest.raises(ValueError, match="selfie"):
            engine.inpaint(InpaintRequest(template=template, faces=[1]))


class TestAnnotatorControls:
    """With an OpenPose annotator the control maps are its maps, as in FaceChain."""

    def test_control_maps_come_from_the_annotator(
        self,
        engine: Engine,
        template: np.ndarray,
        analysis: TemplateAnalysis,
        crops: list[np.ndarray],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        fake = FakePoseAnnotator()
        runs: list[dict[str, object]] = []
        original = TemplateInpainter._run

        def spy(self: TemplateInpainter, pipe: object, job: object, seed: int, **kw: object):
            runs.append(kw)
            return original(self, pipe, job, seed, **kw)

        monkeypatch.setattr(TemplateInpainter, "_run", spy)
        engine.set_pose_annotator(fake)  # type: ignore[arg-type]
        try:
            TemplateInpainter.of(engine).run(
                InpaintRequest(
                    template=template, selfies=[crops[0]], faces=[2], seed=3, analysis=analysis
                )
            )
        finally:
            engine.set_pose_annotator(None)

        size = engine.config.output_size()
        body = cv2.resize(fake.body_map, (size, size), interpolation=cv2.INTER_AREA)
        face = cv2.resize(fake.face_map, (size, size), interpolation=cv2.INTER_AREA)
        stage1, inpaint, refine = runs
        assert np.array_equal(np.asarray(stage1["image"]), body)
        assert np.array_equal(np.asarray(inpaint["control_image"][0]), face)  # type: ignore[index]
        assert np.array_equal(np.asarray(refine["control_image"][0]), face)  # type: ignore[index]
        # FaceChain's flags: body + hands of the crop, then hands + face twice.
        flags = [(c["include_body"], c["include_hand"], c["include_face"]) for c in fake.calls]
        assert flags == [(True, True, False), (False, True, True), (False, True, True)]
        crop_seen, face_seen, result_seen = (c["image"] for c in fake.calls)
        assert crop_seen.shape == face_seen.shape == result_seen.shape == (size, size, 3)
        assert np.array_equal(crop_seen, np.asarray(inpaint["image"]))
        # No face in the tiny stage-1 image: the annotator sees the target face, masked.
        assert 0.2 < (face_seen.max(axis=2) == 0).mean() < 0.9
        assert np.array_equal(face_seen[face_seen > 0], crop_seen[face_seen > 0])
        assert np.array_equal(result_seen, np.asarray(refine["image"]))

    def test_without_annotator_the_landmark_keypoints_are_drawn(
        self,
        engine: Engine,
        template: np.ndarray,
        analysis: TemplateAnalysis,
        crops: list[np.ndarray],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        runs: list[dict[str, object]] = []
        original = TemplateInpainter._run

        def spy(self: TemplateInpainter, pipe: object, job: object, seed: int, **kw: object):
            runs.append(kw)
            return original(self, pipe, job, seed, **kw)

        monkeypatch.setattr(TemplateInpainter, "_run", spy)
        assert engine.pose_annotator() is None
        TemplateInpainter.of(engine).run(
            InpaintRequest(
                template=template, selfies=[crops[0]], faces=[2], seed=3, analysis=analysis
            )
        )
        stage1 = np.asarray(runs[0]["image"])
        # White dots on black only: the 70 synthesised face keypoints, no body colours.
        assert stage1.max() == 255
        assert (stage1.max(axis=2) == stage1.min(axis=2)).all()

    def test_warped_stage1_face_is_what_the_annotator_sees(self, engine: Engine) -> None:
        from facechain.inpaint import _WindowFace

        image = fixture_rgb("man_pose1")
        found = default_detector().detect_faces(image)[0]
        face = _WindowFace.from_landmarks(found.landmarks, image.shape[0])
        inpainter = TemplateInpainter.of(engine)

        keypoints, warp_mask, warped = inpainter._stage1_geometry(image, face)

        assert warped is not None
        assert keypoints.shape == (70, 2)
        assert warped.shape == image.shape
        assert warped[warp_mask == 0].max() == 0
        inside = warp_mask > 0
        assert inside.mean() > 0.02
        # The same face warped onto itself: close to the identity.
        assert np.abs(warped[inside].astype(int) - image[inside].astype(int)).mean() < 12
