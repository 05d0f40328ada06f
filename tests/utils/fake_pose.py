"""A stand-in for the OpenPose annotator that "finds" a fixed skeleton in any image, and skeleton
maps drawn the way controlnet_aux 0.0.6 draws them (reference §1.8, §1.11) with plain cv2."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

from facechain.annotators.openpose.results import BodyResult, Keypoint, PoseResult
from facechain.annotators.palette import BODY_COLORS

# OpenPose limbs 0..16 (the two ear-shoulder limbs are never drawn), COCO-18 parts.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip
# A person standing, arms a little out: (x, y) normalised.
STANDING = (
    (0.50, 0.18), (0.50, 0.28), (0.42, 0.28), (0.38, 0.42), (0.36, 0.55), (0.58, 0.28),
    (0.62, 0.42), (0.64, 0.55), (0.45, 0.55), (0.45, 0.72), (0.45, 0.90), (0.55, 0.55),
    (0.55, 0.72), (0.55, 0.90), (0.48, 0.16), (0.52, 0.16), (0.46, 0.17), (0.54, 0.17),
)  # fmt: skip
# Arms raised.
ARMS_UP = (
    *STANDING[:3], (0.36, 0.18), (0.34, 0.06), STANDING[5], (0.64, 0.18), (0.66, 0.06),
    *STANDING[8:],
)  # fmt: skip


def skeleton_map(
    points: tuple[tuple[float, float], ...] = STANDING, size: tuple[int, int] = (512, 512)
) -> np.ndarray:
    """(H, W, 3) uint8 RGB body map: limbs as 60 % ellipses, then radius-4 keypoints."""
    width, height = size
    canvas = np.zeros((height, width, 3), np.uint8)
    for k, (a, b) in enumerate(LIMBS):
        (x1, y1), (x2, y2) = points[a], points[b]
        ys = (y1 * height, y2 * height)
        xs = (x1 * width, x2 * width)
        length = math.hypot(ys[0] - ys[1], xs[0] - xs[1])
        angle = int(math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1])))
        polygon = cv2.ellipse2Poly(
            (int(sum(xs) / 2), int(sum(ys) / 2)), (int(length / 2), 4), angle, 0, 360, 1
        )
        cv2.fillConvexPoly(canvas, polygon, [int(0.6 * c) for c in BODY_COLORS[k]])
    for i, (x, y) in enumerate(points):
        cv2.circle(canvas, (int(x * width), int(y * height)), 4, BODY_COLORS[i], thickness=-1)
    return canvas


def face_dots_map(size: int = 512) -> np.ndarray:
    """(size, size, 3) uint8 face map: a ring of white radius-3 dots, as `draw_facepose`."""
    canvas = np.zeros((size, size, 3), np.uint8)
    for t in np.linspace(0, 2 * np.pi, 24, endpoint=False):
        centre = (int(size / 2 + size / 5 * np.cos(t)), int(size / 2 + size / 4 * np.sin(t)))
        cv2.circle(canvas, centre, 3, (255, 255, 255), thickness=-1)
    return canvas


def pose_result(points: tuple[tuple[float, float], ...] = STANDING) -> PoseResult:
    """A PoseResult with every body keypoint present."""
    keypoints: list[Keypoint | None] = [Keypoint(x, y, 1.0, i) for i, (x, y) in enumerate(points)]
    return PoseResult(BodyResult(keypoints, 30.0, 18), None, None, None)


@dataclass
class FakePoseAnnotator:
    """Called like `OpenposeAnnotator`; finds `people` copies of one skeleton in any image.

    The map is `body_map` where the body is drawn, plus `face_map` where faces are; every call
    is recorded (the image, its shape and the flags).
    """

    people: int = 1
    body_map: np.ndarray = field(default_factory=skeleton_map)
    face_map: np.ndarray = field(default_factory=face_dots_map)
    calls: list[dict[str, Any]] = field(default_factory=list)

    def detect_poses(
        self, image_rgb: np.ndarray, include_hand: bool = False, include_face: bool = False
    ) -> list[PoseResult]:
        """The fixed people, whatever the image."""
        return [pose_result() for _ in range(self.people)]

    def __call__(
        self,
        image: np.ndarray | Image.Image,
        include_body: bool = True,
        include_hand: bool = False,
        include_face: bool = False,
        detect_resolution: int = 512,
        image_resolution: int = 512,
    ) -> tuple[Image.Image, list[PoseResult]]:
        array = np.asarray(image)
        self.calls.append(
            {
                "image": array.copy(),
                "shape": array.shape,
                "include_body": include_body,
                "include_hand": include_hand,
                "include_face": include_face,
            }
        )
        people = self.detect_poses(array, include_hand, include_face)
        canvas = np.zeros_like(self.body_map)
        if people and include_body:
            canvas = np.maximum(canvas, self.body_map)
        if people and include_face:
            canvas = np.maximum(canvas, self.face_map)
        return Image.fromarray(canvas), people
