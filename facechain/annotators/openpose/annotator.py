"""OpenposeAnnotator: controlnet_aux 0.0.6 `OpenposeDetector` on plain-torch nets."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import cv2
import numpy as np
import torch
from PIL import Image

from facechain.annotators.openpose import body as body_mod
from facechain.annotators.openpose import face as face_mod
from facechain.annotators.openpose import hand as hand_mod
from facechain.annotators.openpose.draw import draw_poses
from facechain.annotators.openpose.model import BodyPoseNet, FaceNet, HandPoseNet, _FlatConvNet
from facechain.annotators.openpose.results import BodyResult, Keypoint, PoseResult
from facechain.annotators.openpose.util import hwc3, resize_image, resized_shape
from facechain.errors import WeightsInvalid, WeightsMissing

logger = logging.getLogger(__name__)

BODY_FILE = "body_pose_model.pth"
HAND_FILE = "hand_pose_model.pth"
FACE_FILE = "facenet.pth"
_SHOWN_KEYS = 5
_RANDOM_OUTPUT_SCALE = 0.1
_Net = TypeVar("_Net", bound=_FlatConvNet)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """torch.load a flat tensor dict on the CPU; WeightsMissing/WeightsInvalid on failure."""
    if not path.is_file():
        raise WeightsMissing(f"OpenPose weights {path} not found")
    try:
        raw: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors have no common type
        raise WeightsInvalid(f"{path.name}: not a readable torch weights file ({exc})") from exc
    if not isinstance(raw, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()
    ):
        raise WeightsInvalid(f"{path.name}: expected a flat dict of tensors")
    return dict(raw)


def _load_net(net_cls: type[_Net], path: Path) -> _Net:
    """Build `net_cls` from the file at `path`, refusing missing, extra or reshaped keys."""
    state = _read_state_dict(path)
    expected = net_cls.template_state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(state) if state[k].shape != expected[k])
    if missing or extra or reshaped:
        raise WeightsInvalid(
            f"{path.name}: does not match {net_cls.__name__}: {len(missing)} missing "
            f"{missing[:_SHOWN_KEYS]}, {len(extra)} unexpected {extra[:_SHOWN_KEYS]}, "
            f"{len(reshaped)} with another shape {reshaped[:_SHOWN_KEYS]}"
        )
    with torch.device("meta"):
        net = net_cls()
    # assign=True takes the loaded tensors as parameters: no random init, no second copy.
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    logger.debug("%s: loaded %d tensors from %s", net_cls.__name__, len(state), path)
    return net


class OpenposeAnnotator:
    """Body, hand and face OpenPose maps as controlnet_aux 0.0.6 `OpenposeDetector` draws them.

    Override `body_maps`, `hand_heatmap` or `face_heatmaps` to feed synthetic maps (tests).
    """

    ANNOTATOR_FILES: ClassVar[tuple[str, str, str]] = (BODY_FILE, HAND_FILE, FACE_FILE)

    def __init__(
        self,
        body: BodyPoseNet,
        hand: HandPoseNet,
        face: FaceNet,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.body = body.to(self.device).float().eval().requires_grad_(False)
        self.hand = hand.to(self.device).float().eval().requires_grad_(False)
        self.face = face.to(self.device).float().eval().requires_grad_(False)

    @classmethod
    def from_dir(cls, folder: Path, device: torch.device | str = "cpu") -> OpenposeAnnotator:
        """Strictly load body_pose_model.pth, hand_pose_model.pth and facenet.pth from `folder`.

        Raises:
            WeightsMissing: a file is absent.
            WeightsInvalid: a file is unreadable or its keys/shapes differ from the network.
        """
        folder = Path(folder)
        body = _load_net(BodyPoseNet, folder / BODY_FILE)
        hand = _load_net(HandPoseNet, folder / HAND_FILE)
        face = _load_net(FaceNet, folder / FACE_FILE)
        logger.info("OpenPose annotator loaded from %s on %s", folder, device)
        return cls(body, hand, face, device)

    @classmethod
    def random(cls, seed: int = 0, device: torch.device | str = "cpu") -> OpenposeAnnotator:
        """Full-size nets with seeded random weights (the tiny profile): finds nobody, fast.

        Default init leaves near-constant maps around 0.1, right at the peak threshold, where a
        plateau could yield thousands of peaks; the output convs are scaled by 0.1 so every map
        stays far below all thresholds whatever the image.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            body, hand, face = BodyPoseNet(), HandPoseNet(), FaceNet()
        with torch.no_grad():
            for net, name in (
                (body, "Mconv7_stage6_L1"),
                (body, "Mconv7_stage6_L2"),
                (hand, "Mconv7_stage6"),
                (face, "Mconv7_stage6"),
            ):
                for param in net.get_submodule(name).parameters():
                    param.mul_(_RANDOM_OUTPUT_SCALE)
        return cls(body, hand, face, device)

    def body_maps(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Detect-size heatmap (H,W,19) and PAF (H,W,38), float64, of a BGR uint8 image."""
        return body_mod.body_maps(self.body, image_bgr, self.device)

    def hand_heatmap(self, crop_bgr: np.ndarray) -> np.ndarray:
        """(128,128,22) float64 hand maps of a BGR uint8 crop, averaged over 4 scales."""
        return hand_mod.hand_heatmap(self.hand, crop_bgr, self.device)

    def face_heatmaps(self, crop_bgr: np.ndarray) -> np.ndarray:
        """(71,h,w) float32 face maps of a BGR uint8 crop of size h x w."""
        return face_mod.face_heatmaps(self.face, crop_bgr, self.device)

    def _hands(
        self, body: BodyResult, image_bgr: np.ndarray
    ) -> tuple[list[Keypoint] | None, list[Keypoint] | None]:
        height, width = image_bgr.shape[:2]
        left: list[Keypoint] | None = None
        right: list[Keypoint] | None = None
        for box in hand_mod.hand_boxes(body, height, width):
            crop = image_bgr[box.y : box.y + box.size, box.x : box.x + box.size, :]
            peaks = hand_mod.hand_peaks(self.hand_heatmap(crop), crop.shape[0], crop.shape[1])
            coords = hand_mod.normalise_peaks(peaks, box.x, box.y, height, width)
            points = [Keypoint(x=x, y=y, id=i) for i, (x, y) in enumerate(coords)]
            if box.is_left:
                left = points
            else:
                right = points
        return left, right

    def _face(self, body: BodyResult, image_bgr: np.ndarray) -> list[Keypoint] | None:
        height, width = image_bgr.shape[:2]
        box = face_mod.face_box(body, height, width)
        if box is None:
            return None
        crop = image_bgr[box.y : box.y + box.size, box.x : box.x + box.size, :]
        peaks = face_mod.face_peaks(self.face_heatmaps(crop))
        if not peaks:
            return None
        xy = np.array([(x, y) for x, y, _ in peaks], dtype=np.int64)
        coords = hand_mod.normalise_peaks(xy, box.x, box.y, height, width)
        return [Keypoint(x=x, y=y, id=c) for (x, y), (_, _, c) in zip(coords, peaks, strict=True)]

    def detect_poses(
        self, image_rgb: np.ndarray, include_hand: bool = False, include_face: bool = False
    ) -> list[PoseResult]:
        """People in an image already at detect size.

        Args:
            image_rgb: (H, W, 3) uint8 RGB (the nets see it flipped to BGR).
            include_hand: also find hands (boxes from the arms).
            include_face: also find face landmarks (box from nose, eyes, ears).

        Returns:
            One PoseResult per person, keypoints normalised by (W, H).
        """
        image_bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
        height, width = image_bgr.shape[:2]
        heatmap, paf = self.body_maps(image_bgr)
        candidate, subset = body_mod.candidates_and_subsets(heatmap, paf, height)
        results = []
        for body in body_mod.format_bodies(candidate, subset):
            left, right = self._hands(body, image_bgr) if include_hand else (None, None)
            face = self._face(body, image_bgr) if include_face else None
            keypoints = [
                None
                if k is None
                else Keypoint(x=k.x / float(width), y=k.y / float(height), score=k.score, id=k.id)
                for k in body.keypoints
            ]
            normalised = BodyResult(keypoints, body.total_score, body.total_parts)
            results.append(PoseResult(normalised, left, right, face))
        logger.debug("openpose: %d people in %dx%d", len(results), width, height)
        return results

    def __call__(
        self,
        image: np.ndarray | Image.Image,
        include_body: bool = True,
        include_hand: bool = False,
        include_face: bool = False,
        detect_resolution: int = 512,
        image_resolution: int = 512,
    ) -> tuple[Image.Image, list[PoseResult]]:
        """The controlnet_aux flow: HWC3, resize to detect size, detect, draw, resize the map.

        Args:
            image: RGB (H, W, 3) uint8 array or PIL image (gray and RGBA are converted; RGBA is
                composited on white).
            include_body: draw the body (the body net always runs: it places hands and face).
            include_hand: detect and draw hands.
            include_face: detect and draw face landmarks.
            detect_resolution: shorter side of the detect image (then rounded to 64 multiples).
            image_resolution: shorter side of the returned map (then rounded to 64 multiples).

        Returns:
            The map (PIL RGB, black background) and the people found, normalised coordinates.
        """
        array = image if isinstance(image, np.ndarray) else np.array(image, dtype=np.uint8)
        detect = resize_image(hwc3(array), detect_resolution)
        height, width = detect.shape[:2]
        poses = self.detect_poses(detect, include_hand, include_face)
        canvas = draw_poses(
            poses,
            height,
            width,
            draw_body=include_body,
            draw_hand=include_hand,
            draw_face=include_face,
        )
        out_h, out_w = resized_shape(height, width, image_resolution)
        detected = cv2.resize(canvas, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        return Image.fromarray(detected), poses
