"""OpenPose-style face control maps synthesised from 5 face landmarks.

FaceChain draws the face keypoints of the OpenPose annotator (68 iBUG points + 2 pupils, white dots
on black, controlnet_aux `draw_facepose`). No OpenPose model is available here, so the 70 points
come from a canonical frontal face shape in the ArcFace 112 frame, placed with the least-squares
similarity fitted to the 5 detected landmarks; the fit's residuals at the 5 anchors are spread
over the other points by inverse-distance weighting, so eyes, nose tip and mouth corners land
exactly on the detected ones and the map keeps the person's own proportions.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from facechain.faces import ARCFACE_TEMPLATE_112, similarity_transform

logger = logging.getLogger(__name__)

NUM_FACE_KEYPOINTS = 70
# Index ranges in the iBUG-68 (+2 pupils) layout.
JAW = slice(0, 17)
BROWS = slice(17, 27)
PUPILS = slice(68, 70)
# controlnet_aux draws radius-3 dots on 512 px maps; smaller maps get proportionally smaller dots.
_DOT_RADIUS_512 = 3


def _canonical_face() -> np.ndarray:
    """70 face keypoints of an average frontal face in the ArcFace 112x112 frame."""
    (lex, ley), (rex, rey), (nx, ny), (mlx, mly), (mrx, mry) = ARCFACE_TEMPLATE_112.tolist()
    cx = (lex + rex) / 2.0
    pts: list[tuple[float, float]] = []
    # Jaw 0-16: from the left temple at eye height, round the chin, to the right temple.
    for i in range(17):
        t = np.pi * i / 16.0
        pts.append((cx - 39.0 * np.cos(t), 53.0 + 64.0 * np.sin(t)))
    # Brows 17-21 (image left) and 22-26 (image right): arcs ~11 px above the eyes.
    for x0 in (lex - 14.0, rex - 12.0):
        for j in range(5):
            pts.append((x0 + 6.5 * j, ley - 11.0 - 4.0 * np.sin(np.pi * j / 4.0)))
    # Nose bridge 27-30 down to the tip, nostrils 31-35.
    pts += [(nx, ny - 21.0 + 7.0 * j) for j in range(4)]
    pts += [(nx - 9.0 + 4.5 * j, ny + 6.0 - (2.0 if j == 2 else 0.0)) for j in range(5)]
    # Eyes 36-41 and 42-47: corner, two upper lid points, corner, two lower lid points.
    for ex, ey in ((lex, ley), (rex, rey)):
        pts += [
            (ex - 7.5, ey),
            (ex - 2.5, ey - 2.8),
            (ex + 2.5, ey - 2.8),
            (ex + 7.5, ey),
            (ex + 2.5, ey + 2.5),
            (ex - 2.5, ey + 2.5),
        ]
    # Outer lip 48-59 from the left corner over the upper lip and back under the lower lip.
    my = (mly + mry) / 2.0
    mx = (mlx + mrx) / 2.0
    half = (mrx - mlx) / 2.0
    pts.append((mlx, mly))
    pts += [(mx + half * f, my - d) for f, d in ((-0.7, 3.2), (-0.35, 4.7), (0.0, 3.8))]
    pts += [(mx + half * f, my - d) for f, d in ((0.35, 4.7), (0.7, 3.2))]
    pts.append((mrx, mry))
    pts += [(mx + half * f, my + d) for f, d in ((0.7, 4.3), (0.35, 6.3), (0.0, 6.8))]
    pts += [(mx + half * f, my + d) for f, d in ((-0.35, 6.3), (-0.7, 4.3))]
    # Inner lip 60-67.
    pts += [(mlx + 2.0, mly), (mx - 0.35 * half, my - 1.2), (mx, my - 1.0)]
    pts += [(mx + 0.35 * half, my - 1.2), (mrx - 2.0, mry), (mx + 0.35 * half, my + 1.3)]
    pts += [(mx, my + 1.8), (mx - 0.35 * half, my + 1.3)]
    # Pupils 68, 69.
    pts += [(lex, ley), (rex, rey)]
    return np.asarray(pts, dtype=np.float64)


CANONICAL_FACE_112 = _canonical_face()
# The 5 ArcFace anchors inside the 70-point layout: pupils, nose tip, mouth corners.
_ANCHOR_INDEX = (68, 69, 30, 48, 54)


def face_keypoints(landmarks: np.ndarray) -> np.ndarray:
    """70 OpenPose face keypoints (68 iBUG + 2 pupils), (70, 2) float32, from 5 landmarks."""
    marks = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    to_image = similarity_transform(ARCFACE_TEMPLATE_112, marks)
    placed = CANONICAL_FACE_112 @ to_image[:, :2].T + to_image[:, 2]
    anchors_template = CANONICAL_FACE_112[list(_ANCHOR_INDEX)]
    residual = marks - placed[list(_ANCHOR_INDEX)]
    # Inverse-distance weights measured in the template frame, so they do not depend on scale.
    dist2 = ((CANONICAL_FACE_112[:, None, :] - anchors_template[None, :, :]) ** 2).sum(-1)
    weights = 1.0 / (dist2 + 1.0)
    weights /= weights.sum(axis=1, keepdims=True)
    keypoints = placed + weights @ residual
    keypoints[list(_ANCHOR_INDEX)] = marks
    result: np.ndarray = keypoints.astype(np.float32)
    return result


def draw_face_pose(
    size: tuple[int, int], keypoint_sets: list[np.ndarray], radius: int | None = None
) -> np.ndarray:
    """OpenPose face map: (H, W, 3) uint8, white dots on black, one set of 70 points per face.

    Args:
        size: (width, height) of the map.
        keypoint_sets: (70, 2) arrays in map pixels (from `face_keypoints`).
        radius: dot radius; default 3 px at 512 px, scaled with the map's longer side.
    """
    width, height = size
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    if radius is None:
        radius = max(1, round(_DOT_RADIUS_512 * max(width, height) / 512))
    for keypoints in keypoint_sets:
        for x, y in np.asarray(keypoints, dtype=np.float64):
            if 0 <= x < width and 0 <= y < height:
                cv2.circle(canvas, (int(x), int(y)), radius, (255, 255, 255), thickness=-1)
    return canvas


def face_region_mask(
    size: tuple[int, int], keypoints: np.ndarray, forehead: float = 0.5
) -> np.ndarray:
    """(H, W) uint8 mask (255 inside) of the face skin: hull of jaw and raised brows.

    Stands in for M2FP's `Face` label. `forehead` lifts the brows by that fraction of the
    brow-to-chin height so the forehead is included, as in a parsing mask.
    """
    width, height = size
    pts = np.asarray(keypoints, dtype=np.float64)
    jaw = pts[JAW]
    brows = pts[BROWS].copy()
    eye_c = pts[PUPILS].mean(axis=0)
    chin = pts[8]
    up = eye_c - chin
    brows += forehead * 0.45 * up
    hull = cv2.convexHull(np.round(np.concatenate([jaw, brows])).astype(np.int32))
    mask = np.zeros((height, width), dtype=np.uint8)
    cv2.fillConvexPoly(mask, hull, 255)
    return mask
