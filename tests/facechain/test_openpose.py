"""OpenPose annotator: strict loading, the numeric helpers, body assembly on synthetic maps,
hand/face boxes and peaks, drawing, and the end-to-end flow (reference §1)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from facechain import registry
from facechain.annotators.openpose import (
    BodyPoseNet,
    BodyResult,
    FaceNet,
    HandPoseNet,
    Keypoint,
    OpenposeAnnotator,
    PoseResult,
    draw_poses,
)
from facechain.annotators.openpose import body as body_mod
from facechain.annotators.openpose.draw import BODY_COLORS, DRAWN_LIMBS, HAND_EDGES
from facechain.annotators.openpose.face import FaceBox, face_box, face_peaks
from facechain.annotators.openpose.hand import HandBox, hand_boxes, hand_peaks, normalise_peaks
from facechain.annotators.openpose.util import gaussian_filter, resize_image, resized_shape
from facechain.errors import WeightsInvalid, WeightsMissing
from tests.facechain.face_data import fixture_rgb
from tests.facechain.openpose_data import (
    STANDING,
    body_maps_for,
    synthetic_state_dict,
    to_pixels,
    write_openpose_weights,
)
from tests.utils.fake_openpose import FakeOpenposeAnnotator

torch.set_num_threads(1)

# Reference §1.11: HSV(e/20, 1, 1) x 255 after cv2's rounding, e0..e19.
HAND_EDGE_RGB = [
    (255, 0, 0), (255, 77, 0), (255, 153, 0), (255, 229, 0), (204, 255, 0), (128, 255, 0),
    (51, 255, 0), (0, 255, 25), (0, 255, 102), (0, 255, 179), (0, 255, 255), (0, 178, 255),
    (0, 102, 255), (0, 25, 255), (51, 0, 255), (128, 0, 255), (204, 0, 255), (255, 0, 230),
    (255, 0, 153), (255, 0, 77),
]  # fmt: skip


def kp(x: float, y: float) -> Keypoint:
    return Keypoint(x=x, y=y)


def body_with(points: dict[int, tuple[float, float]]) -> BodyResult:
    keypoints: list[Keypoint | None] = [None] * 18
    for part, (x, y) in points.items():
        keypoints[part] = kp(x, y)
    return BodyResult(keypoints, 10.0, len(points))


@pytest.fixture(scope="module")
def random_annotator() -> OpenposeAnnotator:
    return OpenposeAnnotator.random(seed=0)


class TestNets:
    @pytest.mark.parametrize(
        ("net_cls", "tensors", "params"),
        [
            (BodyPoseNet, 184, 52_311_446),
            (HandPoseNet, 104, 36_832_324),
            (FaceNet, 104, 38_425_706),
        ],
    )
    def test_published_key_counts(
        self, net_cls: type[BodyPoseNet | HandPoseNet | FaceNet], tensors: int, params: int
    ) -> None:
        template = net_cls.template_state_dict()
        assert len(template) == tensors == net_cls.NUM_TENSORS
        assert sum(shape.numel() for shape in template.values()) == params == net_cls.NUM_PARAMS

    def test_flat_file_key_names(self) -> None:
        body = BodyPoseNet.template_state_dict()
        assert body["conv1_1.weight"] == (64, 3, 3, 3)
        assert body["conv4_4_CPM.weight"] == (128, 256, 3, 3)
        assert body["conv5_5_CPM_L1.weight"] == (38, 512, 1, 1)
        assert body["Mconv1_stage2_L1.weight"] == (128, 185, 7, 7)
        assert body["Mconv7_stage6_L2.bias"] == (19,)
        hand = HandPoseNet.template_state_dict()
        assert hand["Mconv1_stage6.weight"] == (128, 150, 7, 7)
        assert hand["conv6_2_CPM.weight"] == (22, 512, 1, 1)
        face = FaceNet.template_state_dict()
        assert face["Mconv1_stage2.weight"] == (128, 199, 7, 7)
        assert face["Mconv7_stage6.weight"] == (71, 128, 1, 1)
        assert set(hand) == set(face)

    def test_only_the_final_body_heatmap_passes_a_relu(
        self, random_annotator: OpenposeAnnotator
    ) -> None:
        captured: dict[str, torch.Tensor] = {}
        nets = (random_annotator.body, random_annotator.hand, random_annotator.face)
        names = ("Mconv7_stage6_L1", "Mconv7_stage6_L2", "Mconv7_stage6", "Mconv7_stage6")
        hooks = [
            net.get_submodule(name).register_forward_hook(
                lambda _m, _i, out, key=f"{type(net).__name__}.{name}": captured.update({key: out})
            )
            for net, name in zip((nets[0], *nets), names, strict=True)
        ]
        try:
            x = torch.randn(1, 3, 32, 32)
            paf, heat = random_annotator.body(x)
            hand, face = random_annotator.hand(x), random_annotator.face(x)
        finally:
            for hook in hooks:
                hook.remove()
        pre_heat = captured["BodyPoseNet.Mconv7_stage6_L2"]
        assert (pre_heat < 0).any()
        assert torch.equal(heat, pre_heat.clamp(min=0))
        linear = (
            (paf, "BodyPoseNet.Mconv7_stage6_L1"),
            (hand, "HandPoseNet.Mconv7_stage6"),
            (face, "FaceNet.Mconv7_stage6"),
        )
        for out, key in linear:
            assert (captured[key] < 0).any()
            assert torch.equal(out, captured[key])


@pytest.fixture(scope="module")
def weights_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic weights laid out as ModelScope's damo/face_chain_control_model snapshot."""
    src = tmp_path_factory.mktemp("src")
    spec = registry.OPENPOSE_ANNOTATOR
    write_openpose_weights(src / spec.model_id / spec.path, seed=0)
    return src


class TestLoading:
    def test_strict_load_through_the_registry(self, weights_source: Path, tmp_path: Path) -> None:
        cache = tmp_path / "cache"
        registry.download_models(
            cache, only=["openpose_annotator"], local_source=weights_source, link=True
        )
        folder = registry.resolve("openpose_annotator", cache)
        annotator = OpenposeAnnotator.from_dir(folder)
        assert annotator.device == torch.device("cpu")
        assert not annotator.body.training
        assert not annotator.hand.training
        expected = synthetic_state_dict(FaceNet, seed=2)
        bias = annotator.face.get_parameter("Mconv7_stage6.bias")
        assert torch.equal(bias, expected["Mconv7_stage6.bias"])
        for net in (annotator.body, annotator.hand, annotator.face):
            assert sum(p.numel() for p in net.parameters()) == type(net).NUM_PARAMS

    @staticmethod
    def _folder_with(weights_source: Path, tmp_path: Path, name: str, state: object) -> Path:
        """Good files hard-linked, `name` replaced by `state`."""
        good = (
            weights_source
            / registry.OPENPOSE_ANNOTATOR.model_id
            / registry.OPENPOSE_ANNOTATOR.path
        )
        folder = tmp_path / "bad"
        folder.mkdir()
        for other in OpenposeAnnotator.ANNOTATOR_FILES:
            if other != name:
                os.link(good / other, folder / other)
        torch.save(state, folder / name)
        return folder

    def test_missing_key_is_refused(self, weights_source: Path, tmp_path: Path) -> None:
        state = synthetic_state_dict(FaceNet)
        del state["Mconv7_stage6.bias"]
        folder = self._folder_with(weights_source, tmp_path, "facenet.pth", state)
        with pytest.raises(
            WeightsInvalid, match=r"facenet\.pth.*1 missing \['Mconv7_stage6\.bias'\]"
        ):
            OpenposeAnnotator.from_dir(folder)

    def test_extra_key_is_refused(self, weights_source: Path, tmp_path: Path) -> None:
        state = synthetic_state_dict(HandPoseNet)
        state["model1_0.conv1_1.weight"] = state["conv1_1.weight"].clone()
        folder = self._folder_with(weights_source, tmp_path, "hand_pose_model.pth", state)
        with pytest.raises(
            WeightsInvalid,
            match=r"hand_pose_model\.pth.*1 unexpected \['model1_0\.conv1_1\.weight'\]",
        ):
            OpenposeAnnotator.from_dir(folder)

    def test_face_file_as_hand_file_is_refused(self, weights_source: Path, tmp_path: Path) -> None:
        folder = self._folder_with(
            weights_source, tmp_path, "hand_pose_model.pth", synthetic_state_dict(FaceNet)
        )
        with pytest.raises(WeightsInvalid, match=r"another shape \['Mconv1_stage2\.weight'"):
            OpenposeAnnotator.from_dir(folder)

    def test_unreadable_and_absent_files(self, tmp_path: Path) -> None:
        (tmp_path / "body_pose_model.pth").write_bytes(b"not a checkpoint")
        with pytest.raises(WeightsInvalid, match=r"body_pose_model\.pth"):
            OpenposeAnnotator.from_dir(tmp_path)
        with pytest.raises(WeightsMissing):
            OpenposeAnnotator.from_dir(tmp_path / "nowhere")


def scipy_reflect_gaussian(x: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    """scipy.ndimage.gaussian_filter(x, sigma) written out: 25 taps, mode reflect (dcba|abcd)."""
    radius = int(4.0 * sigma + 0.5)
    taps = np.array([math.exp(-(t * t) / (2 * sigma * sigma)) for t in range(-radius, radius + 1)])
    taps /= taps.sum()
    out = x.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")  # numpy "symmetric" = scipy "reflect"
        length = out.shape[axis]
        acc = np.zeros_like(out)
        for i, w in enumerate(taps):
            acc += w * np.take(padded, range(i, i + length), axis=axis)
        out = acc
    return out


class TestHelpers:
    @pytest.mark.parametrize("shape", [(40, 60), (128, 128), (23, 31)])
    def test_gaussian_filter_matches_scipy_reflect(self, shape: tuple[int, int]) -> None:
        x = np.random.default_rng(0).random(shape)
        x[3, 5] = 7.0  # an edge-near spike exercises the border rule
        np.testing.assert_allclose(gaussian_filter(x), scipy_reflect_gaussian(x), atol=1e-12)

    def test_gaussian_filter_is_scipys_bit_for_bit(self) -> None:
        x = np.random.default_rng(1).random((64, 88)) * 3.0
        assert np.array_equal(gaussian_filter(x), ndimage.gaussian_filter(x, sigma=3))

    def test_gaussian_filter_is_not_mirror_padding(self) -> None:
        x = np.zeros((30, 30))
        x[0, 0] = 1.0
        # Edge-duplicating reflection keeps more mass at the corner than mirror (torch "reflect").
        assert gaussian_filter(x)[0, 0] == pytest.approx(scipy_reflect_gaussian(x)[0, 0])
        taps = np.exp(-(np.arange(-12, 13) ** 2) / 18.0)
        taps /= taps.sum()
        assert gaussian_filter(x)[0, 0] == pytest.approx((taps[12] + taps[11]) ** 2)

    @pytest.mark.parametrize(
        ("height", "width", "resolution", "expected"),
        [
            (480, 640, 512, (512, 704)),  # 682.7 -> 10.67 x 64 -> 704
            (640, 480, 512, (704, 512)),
            (512, 512, 512, (512, 512)),
            (300, 1000, 512, (512, 1728)),
            (512, 672, 512, (512, 640)),  # 10.5 -> 10 (ties to even)
            (512, 736, 512, (512, 768)),  # 11.5 -> 12
            (512, 704, 256, (256, 384)),  # 5.5 -> 6
            (1260, 1680, 512, (512, 704)),
        ],
    )
    def test_resize_image_sizes(
        self, height: int, width: int, resolution: int, expected: tuple[int, int]
    ) -> None:
        assert resized_shape(height, width, resolution) == expected
        image = np.zeros((height, width, 3), np.uint8)
        assert resize_image(image, resolution).shape == (*expected, 3)


class TestBodyAssembly:
    SIZE = (256, 256)

    def run(
        self, people: list[dict[int, tuple[int, int]]], peak: float = 1.0, paf_value: float = 1.0
    ) -> list[BodyResult]:
        heatmap, paf = body_maps_for(people, *self.SIZE, peak=peak, paf_value=paf_value)
        candidate, subset = body_mod.candidates_and_subsets(heatmap, paf, self.SIZE[0])
        return body_mod.format_bodies(candidate, subset)

    def test_recovers_a_full_skeleton(self) -> None:
        person = to_pixels(STANDING, *self.SIZE)
        (found,) = self.run([person])
        assert found.total_parts == 18
        for part, keypoint in enumerate(found.keypoints):
            assert keypoint is not None
            assert (keypoint.x, keypoint.y) == person[part]
            assert keypoint.id == part  # one peak per part: ids follow part order
            assert keypoint.score == pytest.approx(1.0)
        # 18 peaks of 1.0 plus 17 tree limbs scoring ~1.0 (limbs 17-18 add nothing new).
        assert found.total_score == pytest.approx(35.0, abs=0.1)

    def test_two_people_stay_separate(self) -> None:
        left = {k: (round(x * 110) + 8, round(y * 250)) for k, (x, y) in STANDING.items()}
        right = {k: (x + 128, y) for k, (x, y) in left.items()}
        found = self.run([left, right])
        assert len(found) == 2
        by_neck = sorted(found, key=lambda b: b.keypoints[1].x if b.keypoints[1] else 0)
        for body, person in zip(by_neck, (left, right), strict=True):
            assert body.total_parts == 18
            assert [(k.x, k.y) for k in body.keypoints if k] == [person[p] for p in range(18)]

    def test_small_and_weak_people_are_dropped(self) -> None:
        three = {1: (40, 40), 2: (20, 40), 3: (20, 70)}
        four = {1: (150, 40), 2: (130, 40), 3: (130, 70), 4: (130, 100)}
        found = self.run([three, four])
        assert [b.total_parts for b in found] == [4]
        assert found[0].keypoints[4] is not None
        assert found[0].keypoints[4].x == 130
        person = to_pixels(STANDING, *self.SIZE)
        # Peaks 0.3 (smoothed 0.15 > 0.1) with strong limbs: kept; with faint limbs (0.06 > 0.05
        # passes the sample test) the mean score per part drops under 0.4: dropped.
        assert len(self.run([person], peak=0.3, paf_value=1.0)) == 1
        assert self.run([person], peak=0.3, paf_value=0.06) == []

    def test_paf_direction_matters(self) -> None:
        person = to_pixels(STANDING, *self.SIZE)
        heatmap, paf = body_maps_for([person], *self.SIZE)
        assert body_mod.candidates_and_subsets(heatmap, -paf, self.SIZE[0])[1].shape == (0, 20)

    def test_peaks_are_global_ids_in_row_major_order(self) -> None:
        heatmap, _ = body_maps_for([{0: (50, 30)}, {0: (20, 60)}, {1: (10, 10)}], 100, 100)
        peaks = body_mod.find_peaks(heatmap)
        assert [(x, y, i) for x, y, _, i in peaks[0]] == [(50, 30, 0), (20, 60, 1)]
        assert [(x, y, i) for x, y, _, i in peaks[1]] == [(10, 10, 2)]
        assert [s for part in peaks[:2] for _, _, s, _ in part] == pytest.approx([1.0] * 3)
        assert all(p == [] for p in peaks[2:])

    def test_a_peak_between_two_pixels_keeps_both(self) -> None:
        # A blob centred at x = 31.5: scipy smooths the two middle pixels to the same value, and
        # controlnet_aux's >= comparisons then keep both as peaks (reference §1.7, step 3).
        rows, cols = np.arange(64)[:, None], np.arange(64)
        heatmap = np.zeros((64, 64, 19))
        heatmap[:, :, 0] = 0.8 * np.exp(-((rows - 30) ** 2 + (cols - 31.5) ** 2) / 32.0)
        smooth = ndimage.gaussian_filter(heatmap[:, :, 0], sigma=3)
        assert smooth[30, 31] == smooth[30, 32]
        peaks = body_mod.find_peaks(heatmap)
        assert [(x, y, i) for x, y, _, i in peaks[0]] == [(31, 30, 0), (32, 30, 1)]


def raster_labels(binary: np.ndarray) -> tuple[np.ndarray, int]:
    """skimage's `label(connectivity=2)` written out: 8-connected regions numbered 1, 2, ... in
    raster order of each region's first pixel."""
    labels = np.zeros(binary.shape, dtype=np.int64)
    count = 0
    height, width = binary.shape
    for row, col in zip(*np.nonzero(binary), strict=True):
        if labels[row, col]:
            continue
        count += 1
        labels[row, col] = count
        stack = [(int(row), int(col))]
        while stack:
            y, x = stack.pop()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < height and 0 <= nx < width and binary[ny, nx]:
                        if not labels[ny, nx]:
                            labels[ny, nx] = count
                            stack.append((ny, nx))
    return labels, count


def reference_hand_peak(raw: np.ndarray, crop_height: int, crop_width: int) -> list[int]:
    """controlnet_aux 0.0.6 hand.py for one map: scipy smoothing, skimage numbering, np.argmax
    over the regions' raw sums (the first region on a tie), first row-major maximum."""
    labels, count = raster_labels(ndimage.gaussian_filter(raw, sigma=3) > 0.05)
    best = int(np.argmax([np.sum(raw[labels == i]) for i in range(1, count + 1)])) + 1
    kept = np.where(labels == best, raw, 0.0)
    row, col = np.unravel_index(int(np.argmax(kept)), kept.shape)
    return [int(col * crop_width / 128), int(row * crop_height / 128)]


class TestBoxes:
    def test_hand_box_rule(self) -> None:
        body = body_with({5: (100, 100), 6: (100, 160), 7: (100, 200)})
        # centre = wrist + 0.33 (wrist - elbow) = (100, 213.2); side = 1.5 max(40, 0.9 x 60) = 81
        assert hand_boxes(body, 400, 400) == [HandBox(59, 172, 81, True)]

    def test_hand_boxes_left_first_clamped_cut_and_small_dropped(self) -> None:
        body = body_with(
            {
                2: (100, 150), 3: (150, 150), 4: (190, 150),  # right arm, reaching the border
                5: (30, 60), 6: (20, 40), 7: (10, 20),  # left arm, hand off the top-left corner
            }
        )  # fmt: skip
        # left: side 1.5 x sqrt(500) = 33.5 at (6.7, 13.4) - 16.8 -> clamped to (0, 0)
        # right: side 1.5 x max(40, 45) = 67.5 at x = 203.2 - 33.75 = 169.45 -> cut to 200 - 169.45
        assert hand_boxes(body, 300, 200) == [
            HandBox(0, 0, 33, True),
            HandBox(169, 116, 30, False),
        ]
        tiny = body_with({5: (100, 100), 6: (105, 100), 7: (110, 100)})  # side 7.5 < 20
        assert hand_boxes(tiny, 300, 300) == []
        no_elbow = body_with({5: (100, 100), 7: (100, 200)})
        assert hand_boxes(no_elbow, 300, 300) == []

    def test_face_box_rule(self) -> None:
        # eye: 3 x Chebyshev 10 = 30; ear: 1.5 x 20 = 30 -> top-left nose - 30, side 60
        body = body_with({0: (100, 100), 14: (90, 95), 16: (80, 100)})
        assert face_box(body, 300, 300) == FaceBox(70, 70, 60)
        assert face_box(body_with({0: (100, 100)}), 300, 300) is None
        assert face_box(body_with({14: (90, 95), 15: (110, 95)}), 300, 300) is None
        assert face_box(body_with({0: (100, 100), 15: (103, 100)}), 300, 300) is None  # 18 < 20

    def test_face_box_border_quirk(self) -> None:
        # The border test is `x + width > W`, not `x + 2 width`: a box near the right edge keeps
        # its full side (the crop is then cut by slicing, non-square).
        body = body_with({0: (190, 100), 15: (180, 100)})
        assert face_box(body, 300, 200) == FaceBox(160, 70, 60)
        # Clamped at 0 with width > W: the side becomes W - 0.
        big = body_with({0: (10, 10), 14: (40, 10)})  # width 90, 2 x 90 = 180
        assert face_box(big, 80, 80) == FaceBox(0, 0, 80)


class TestHandAndFacePeaks:
    def test_component_with_largest_raw_sum_wins(self) -> None:
        maps = np.zeros((128, 128, 22))
        maps[20, 100, 0] = 3.0  # a tall spike: highest value, tiny region
        maps[60:80, 30:50, 0] = 0.3  # a broad plateau: lower values, largest sum
        maps[:, :, 1] = 0.01  # never above 0.05 after smoothing
        peaks = hand_peaks(maps, 192, 256)
        # First row-major maximum inside the plateau, scaled by (256/128, 192/128).
        assert peaks[0].tolist() == [int(30 * 256 / 128), int(60 * 192 / 128)]
        assert peaks[1].tolist() == [0, 0]
        maps[60:80, 30:50, 0] = 0.0
        assert hand_peaks(maps, 192, 256)[0].tolist() == [200, 30]

    def test_equal_sums_pick_the_first_region_in_raster_order(self) -> None:
        # Two identical blobs, the right one a row higher: its region's first pixel comes first
        # in raster order (row 16), though the left one starts further left in the next row.
        rows, cols = np.arange(128)[:, None], np.arange(128)
        maps = np.zeros((128, 128, 22))
        for cy, cx in ((21, 95), (22, 30)):
            maps[:, :, 0] += 0.6 * np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / 8.0)
        labels, count = raster_labels(ndimage.gaussian_filter(maps[:, :, 0], sigma=3) > 0.05)
        sums = [np.sum(maps[:, :, 0][labels == i]) for i in (1, 2)]
        assert count == 2
        assert sums[0] == sums[1]
        expected = reference_hand_peak(maps[:, :, 0], 192, 256)
        assert expected == [int(95 * 256 / 128), int(21 * 192 / 128)]
        assert hand_peaks(maps, 192, 256)[0].tolist() == expected

    def test_zero_coordinates_become_minus_one(self) -> None:
        peaks = np.array([[0, 0], [0, 5], [7, 5]])
        coords = normalise_peaks(peaks, 10, 20, 100, 200)

        def f32(a: float, b: float) -> float:  # computed in float32, as controlnet_aux
            return float(np.float32(a) / np.float32(b))

        assert coords[0] == (f32(-1, 200), f32(-1, 100))
        assert coords[1] == (f32(-1, 200), f32(25, 100))
        assert coords[2] == (f32(17, 200), 0.25)
        assert coords[0][0] == pytest.approx(-1 / 200)

    def test_face_peaks_use_every_channel_above_threshold(self) -> None:
        maps = np.zeros((71, 40, 30), np.float32)
        maps[0, 5, 7] = 0.9
        maps[0, 6, 8] = 0.9  # tie: first in row-major order wins
        maps[3, 10, 2] = 0.04  # below 0.05: skipped
        maps[70, 30, 20] = 0.5  # the last channel counts too
        assert face_peaks(maps) == [(7, 5, 0), (20, 30, 70)]


class TestDrawing:
    H, W = 120, 200

    @pytest.mark.parametrize("limb", range(17))
    def test_limb_colour_at_sixty_percent(self, limb: int) -> None:
        a, b = DRAWN_LIMBS[limb]
        body = body_with({a: (0.2, 0.5), b: (0.8, 0.5)})
        canvas = draw_poses([PoseResult(body, None, None, None)], self.H, self.W)
        expected = tuple(int(c * 0.6) for c in BODY_COLORS[limb])
        assert tuple(canvas[60, 100]) == expected
        assert tuple(canvas[60, 40]) == BODY_COLORS[a]  # dots over the limbs, radius 4
        assert tuple(canvas[60, 160]) == BODY_COLORS[b]
        assert tuple(canvas[60, 40 + 5]) == expected  # just past the dot, inside the ellipse
        assert tuple(canvas[60, 40 - 5]) == (0, 0, 0)  # the ellipse ends at the keypoints
        assert tuple(canvas[60 - 5, 100]) == (0, 0, 0)  # stick half-width 4

    def test_keypoint_colours_and_missing_parts(self) -> None:
        for part in range(18):
            canvas = draw_poses(
                [PoseResult(body_with({part: (0.5, 0.5)}), None, None, None)], 50, 50
            )
            assert tuple(canvas[25, 25]) == BODY_COLORS[part]
            assert tuple(canvas[25, 25 + 4]) == BODY_COLORS[part]
            assert tuple(canvas[25, 25 + 5]) == (0, 0, 0)
        empty = PoseResult(BodyResult([None] * 18, 0.0, 0), None, None, None)
        assert not draw_poses([empty], 50, 50).any()
        hidden = PoseResult(body_with({1: (0.5, 0.5)}), None, None, None)
        assert not draw_poses([hidden], 50, 50, draw_body=False).any()

    @pytest.mark.parametrize("edge", range(20))
    def test_hand_edge_colours(self, edge: int) -> None:
        a, b = HAND_EDGES[edge]
        hand = [kp(-1 / self.W, -1 / self.H) for _ in range(21)]
        hand[a], hand[b] = kp(0.2, 0.5), kp(0.8, 0.5)
        canvas = draw_poses([PoseResult(body_with({}), hand, None, None)], self.H, self.W)
        assert tuple(canvas[60, 100]) == HAND_EDGE_RGB[edge]
        assert tuple(canvas[60, 40]) == (0, 0, 255)  # blue dots over the lines
        assert tuple(canvas[60, 160]) == (0, 0, 255)
        assert (canvas.any(axis=2)).sum() < 2 * 9 * 9 + 3 * 130  # nothing else drawn

    def test_hand_and_face_points_in_float64_on_a_704_wide_canvas(self) -> None:
        # x = float32(301 / 704): float32 arithmetic (numpy 2) gives pixel 301, float64 (numpy 1,
        # which FaceChain ran) gives 300.
        x = float(np.float32(np.float32(301) / np.float32(704)))
        assert int(np.float32(x) * np.float32(704)) == 301
        expected = int(x * 704)
        assert expected == 300
        face = [kp(x, 0.5)]
        canvas = draw_poses([PoseResult(body_with({}), None, None, face)], 512, 704)
        assert np.nonzero(canvas[256].any(axis=1))[0].tolist() == list(
            range(expected - 3, expected + 4)
        )
        hand = [kp(-1 / 704, -1 / 512) for _ in range(21)]
        hand[5] = kp(x, 0.5)
        canvas = draw_poses([PoseResult(body_with({}), hand, None, None)], 512, 704)
        assert np.nonzero(canvas[256].any(axis=1))[0].tolist() == list(
            range(expected - 4, expected + 5)
        )

    def test_face_dots_and_edge_points(self) -> None:
        face = [kp(0.5, 0.5), kp(0.0, 0.5), kp(-1 / self.W, 0.3)]
        canvas = draw_poses([PoseResult(body_with({}), None, None, face)], self.H, self.W)
        assert tuple(canvas[60, 100]) == (255, 255, 255)
        assert tuple(canvas[60, 103]) == (255, 255, 255)
        assert tuple(canvas[60, 104]) == (0, 0, 0)  # radius 3
        assert canvas.any(axis=2).sum() == (canvas[55:66, 95:106].any(axis=2)).sum()  # x=0 skipped
        assert not draw_poses(
            [PoseResult(body_with({}), None, [], face)], 10, 10, draw_face=False
        ).any()


class TestEndToEnd:
    def test_random_weights_on_a_photo(self, random_annotator: OpenposeAnnotator) -> None:
        photo = fixture_rgb("man_pose1")
        pose_map, poses = random_annotator(Image.fromarray(photo), include_hand=True)
        assert isinstance(pose_map, Image.Image)
        assert pose_map.mode == "RGB"
        assert pose_map.size == (512, 512)
        assert poses == []  # random output convs are scaled far below every threshold
        assert not np.asarray(pose_map).any()

    def test_fake_person_through_the_whole_flow(self) -> None:
        annotator = FakeOpenposeAnnotator()
        photo = np.asarray(Image.fromarray(fixture_rgb("man_pose1")).resize((640, 480)))
        pose_map, poses = annotator(photo, include_hand=True, include_face=True)
        assert pose_map.size == (704, 512)  # detect 512 x 704; map at image_resolution 512
        assert annotator.calls[0] == ("body", (512, 704, 3))
        (pose,) = poses
        expected = to_pixels(STANDING, 512, 704)
        for part, keypoint in enumerate(pose.body.keypoints):
            assert keypoint is not None
            assert (keypoint.x * 704, keypoint.y * 512) == pytest.approx(expected[part])
        assert pose.left_hand is not None
        assert len(pose.left_hand) == 21
        assert pose.right_hand is not None
        assert pose.left_hand[0].x > pose.right_hand[0].x
        assert pose.face is not None
        assert len(pose.face) == 70
        pixels = {tuple(p) for p in np.asarray(pose_map).reshape(-1, 3)}
        assert (255, 255, 255) in pixels
        assert (0, 0, 255) in pixels
        assert BODY_COLORS[1] in pixels
        assert HAND_EDGE_RGB[0] in pixels
        small_map, _ = annotator(
            photo, include_body=False, include_hand=True, image_resolution=256
        )
        assert small_map.size == (384, 256)
        assert BODY_COLORS[1] not in {tuple(p) for p in np.asarray(small_map).reshape(-1, 3)}

    def test_nets_see_bgr(self) -> None:
        seen: list[np.ndarray] = []

        class Spy(FakeOpenposeAnnotator):
            def body_maps(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                seen.append(image_bgr.copy())
                return super().body_maps(image_bgr)

        red = np.zeros((64, 64, 3), np.uint8)
        red[..., 0] = 200
        Spy().detect_poses(red)
        assert seen[0][..., 2].min() == 200
        assert not seen[0][..., :2].any()

    def test_rgba_and_gray_inputs(self) -> None:
        annotator = FakeOpenposeAnnotator(people=[])
        rgba = np.zeros((100, 80, 4), np.uint8)
        gray = Image.new("L", (80, 100))
        for image in (rgba, gray):
            pose_map, poses = annotator(image)
            assert pose_map.size == (512, 640)
            assert poses == []
        with pytest.raises(ValueError, match="uint8"):
            annotator(np.zeros((10, 10, 3), np.float32))
