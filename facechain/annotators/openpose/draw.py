"""Drawing of OpenPose maps exactly as controlnet_aux 0.0.6 (colours given as RGB)."""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np

from facechain.annotators.openpose.results import Keypoint, PoseResult
from facechain.annotators.palette import (
    BODY_COLORS,
    DRAWN_LIMBS,
    FACE_POINT_COLOR,
    HAND_EDGES,
    HAND_POINT_COLOR,
    LIMB_SHADE,
    hand_edge_color,
)

logger = logging.getLogger(__name__)

STICK_WIDTH = 4
BODY_POINT_RADIUS = 4
HAND_POINT_RADIUS = 4
FACE_POINT_RADIUS = 3
HAND_LINE_THICKNESS = 2
_EPS = 0.01


def _pixel(keypoint: Keypoint, width: int, height: int) -> tuple[int, int]:
    """int(x * W), int(y * H) in float64, as controlnet_aux computed hand and face points.

    Their coordinates are numpy float32 scalars there; FaceChain ran numpy 1, whose value-based
    casting multiplied such a scalar by a Python int in float64 (numpy 2 stays in float32, which
    on sizes that are not powers of two, such as 704, can land one pixel lower).
    """
    return int(float(keypoint.x) * width), int(float(keypoint.y) * height)


def draw_bodypose(canvas: np.ndarray, keypoints: list[Keypoint | None]) -> np.ndarray:
    """Draw 17 limbs (filled ellipses, 0.6 x colour) then 18 dots (radius 4) in place."""
    height, width = canvas.shape[:2]
    for (a, b), color in zip(DRAWN_LIMBS, BODY_COLORS, strict=False):
        k1, k2 = keypoints[a], keypoints[b]
        if k1 is None or k2 is None:
            continue
        xs = (k1.x * float(width), k2.x * float(width))
        ys = (k1.y * float(height), k2.y * float(height))
        mean_x = (xs[0] + xs[1]) / 2
        mean_y = (ys[0] + ys[1]) / 2
        length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        polygon = cv2.ellipse2Poly(
            (int(mean_x), int(mean_y)), (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1
        )
        shade = [float(int(float(c) * LIMB_SHADE)) for c in color]
        cv2.fillConvexPoly(canvas, np.asarray(polygon), shade)
    for keypoint, color in zip(keypoints, BODY_COLORS, strict=False):
        if keypoint is None:
            continue
        x, y = int(keypoint.x * width), int(keypoint.y * height)
        cv2.circle(canvas, (x, y), BODY_POINT_RADIUS, color, thickness=-1)
    return canvas


def draw_handpose(canvas: np.ndarray, keypoints: list[Keypoint] | None) -> np.ndarray:
    """Draw 20 HSV-coloured edges (thickness 2) then blue dots (radius 4) in place."""
    if not keypoints:
        return canvas
    height, width = canvas.shape[:2]
    for edge, (a, b) in enumerate(HAND_EDGES):
        k1, k2 = keypoints[a], keypoints[b]
        x1, y1 = _pixel(k1, width, height)
        x2, y2 = _pixel(k2, width, height)
        if x1 > _EPS and y1 > _EPS and x2 > _EPS and y2 > _EPS:
            cv2.line(
                canvas, (x1, y1), (x2, y2), hand_edge_color(edge), thickness=HAND_LINE_THICKNESS
            )
    for keypoint in keypoints:
        x, y = _pixel(keypoint, width, height)
        if x > _EPS and y > _EPS:
            cv2.circle(canvas, (x, y), HAND_POINT_RADIUS, HAND_POINT_COLOR, thickness=-1)
    return canvas


def draw_facepose(canvas: np.ndarray, keypoints: list[Keypoint] | None) -> np.ndarray:
    """Draw white dots (radius 3) in place."""
    if not keypoints:
        return canvas
    height, width = canvas.shape[:2]
    for keypoint in keypoints:
        x, y = _pixel(keypoint, width, height)
        if x > _EPS and y > _EPS:
            cv2.circle(canvas, (x, y), FACE_POINT_RADIUS, FACE_POINT_COLOR, thickness=-1)
    return canvas


def draw_poses(
    poses: list[PoseResult],
    height: int,
    width: int,
    draw_body: bool = True,
    draw_hand: bool = True,
    draw_face: bool = True,
) -> np.ndarray:
    """Draw people on a black canvas, person by person: body, left hand, right hand, face.

    Args:
        poses: people with keypoints normalised to [0, 1] (missing hand/face points negative).
        height: canvas height in pixels.
        width: canvas width in pixels.
        draw_body: draw limbs and body keypoints.
        draw_hand: draw both hands.
        draw_face: draw face dots.

    Returns:
        (height, width, 3) uint8 RGB map.
    """
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for pose in poses:
        if draw_body:
            draw_bodypose(canvas, pose.body.keypoints)
        if draw_hand:
            draw_handpose(canvas, pose.left_hand)
            draw_handpose(canvas, pose.right_hand)
        if draw_face:
            draw_facepose(canvas, pose.face)
    return canvas
