"""Synthetic OpenPose maps: part heatmaps with Gaussian blobs and unit-vector PAFs along limbs.

Feed them to `body.candidates_and_subsets` (or return them from an annotator's `body_maps`) to
get a known skeleton back without any network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from facechain.annotators.openpose.body import LIMBS, NUM_PARTS, PAF_CHANNELS
from facechain.annotators.openpose.model import BodyPoseNet, FaceNet, HandPoseNet, _FlatConvNet

# A person standing with the arms a little out, COCO-18 parts -> (x, y) normalised to [0, 1].
STANDING: dict[int, tuple[float, float]] = {
    0: (0.50, 0.20),
    1: (0.50, 0.30),
    2: (0.40, 0.30),
    3: (0.36, 0.42),
    4: (0.34, 0.54),
    5: (0.60, 0.30),
    6: (0.64, 0.42),
    7: (0.66, 0.54),
    8: (0.45, 0.58),
    9: (0.44, 0.74),
    10: (0.44, 0.90),
    11: (0.55, 0.58),
    12: (0.56, 0.74),
    13: (0.56, 0.90),
    14: (0.48, 0.18),
    15: (0.52, 0.18),
    16: (0.46, 0.19),
    17: (0.54, 0.19),
}

# 21 hand keypoints (wrist, then 4 per finger from thumb to little finger) on the 128x128 grid,
# fingers pointing down as on a hanging arm.
HAND_128: tuple[tuple[int, int], ...] = (
    (64, 17),
    *((40 - 6 * j, 35 + 12 * j) for j in range(4)),
    *((52 - 2 * j, 47 + 14 * j) for j in range(4)),
    *((64, 49 + 15 * j) for j in range(4)),
    *((76 + 2 * j, 47 + 14 * j) for j in range(4)),
    *((88 + 6 * j, 41 + 11 * j) for j in range(4)),
)


def to_pixels(
    person: Mapping[int, tuple[float, float]], height: int, width: int
) -> dict[int, tuple[int, int]]:
    """Normalised part positions -> integer pixels of an H x W image."""
    return {p: (round(x * (width - 1)), round(y * (height - 1))) for p, (x, y) in person.items()}


def blob(
    height: int, width: int, x: float, y: float, sigma: float, peak: float = 1.0
) -> np.ndarray:
    """(H, W) float64 Gaussian bump of height `peak` centred on (x, y)."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.asarray(peak * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2.0 * sigma**2)))


def body_maps_for(
    people: Sequence[Mapping[int, tuple[int, int]]],
    height: int,
    width: int,
    sigma: float = 3.0,
    peak: float = 1.0,
    paf_value: float = 1.0,
    limb_width: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Heatmap (H, W, 19) and PAF (H, W, 38), float64, for people given as part -> pixel (x, y).

    Each present part gets a Gaussian blob (max over people); each limb whose two parts are
    present gets `paf_value` x the unit vector A->B on pixels within `limb_width` of segment AB.
    Channel 18 is the background, 1 - max of the parts.
    """
    heatmap = np.zeros((height, width, NUM_PARTS + 1))
    paf = np.zeros((height, width, 2 * len(LIMBS)))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    for person in people:
        for part, (x, y) in person.items():
            heatmap[:, :, part] = np.maximum(
                heatmap[:, :, part], blob(height, width, x, y, sigma, peak)
            )
        for (a, b), (cx, cy) in zip(LIMBS, PAF_CHANNELS, strict=True):
            if a not in person or b not in person:
                continue
            (ax, ay), (bx, by) = person[a], person[b]
            length = max(float(np.hypot(bx - ax, by - ay)), 1e-6)
            ux, uy = (bx - ax) / length, (by - ay) / length
            along = (xs - ax) * ux + (ys - ay) * uy
            across = np.abs((xs - ax) * uy - (ys - ay) * ux)
            on_limb = (along >= -0.5) & (along <= length + 0.5) & (across <= limb_width)
            paf[on_limb, cx] = paf_value * ux
            paf[on_limb, cy] = paf_value * uy
    heatmap[:, :, NUM_PARTS] = 1.0 - heatmap[:, :, :NUM_PARTS].max(axis=2)
    return heatmap, paf


def hand_heatmap_for(
    points: Sequence[tuple[int, int]] = HAND_128, size: int = 128, sigma: float = 2.0
) -> np.ndarray:
    """(size, size, 22) float64 hand maps with a blob per keypoint (x, y) on the grid."""
    maps = np.zeros((size, size, 22))
    for i, (x, y) in enumerate(points):
        maps[:, :, i] = blob(size, size, x, y, sigma)
    return maps


def face_heatmaps_for(
    points: Sequence[tuple[int, int]], height: int, width: int, channels: int = 71
) -> np.ndarray:
    """(channels, H, W) float32 face maps: channel i peaks (value 1) at points[i], others 0."""
    maps = np.zeros((channels, height, width), dtype=np.float32)
    for i, (x, y) in enumerate(points):
        maps[i] = blob(height, width, x, y, 1.0)
    return maps


def face_ring(height: int, width: int, count: int = 70) -> list[tuple[int, int]]:
    """`count` distinct points on an ellipse inside an H x W face crop."""
    t = np.linspace(0.0, 2.0 * np.pi, count, endpoint=False)
    xs = np.round(width / 2 + 0.35 * width * np.cos(t)).astype(int)
    ys = np.round(height / 2 + 0.4 * height * np.sin(t)).astype(int)
    return [(int(x), int(y)) for x, y in zip(xs, ys, strict=True)]


def synthetic_state_dict(net_cls: type[_FlatConvNet], seed: int = 0) -> dict[str, torch.Tensor]:
    """Small random fp32 tensors under every real key and shape of `net_cls`'s published file."""
    gen = torch.Generator().manual_seed(seed)
    return {
        key: torch.randn(shape, generator=gen) * 0.01
        for key, shape in net_cls.template_state_dict().items()
    }


def write_openpose_weights(folder: Path, seed: int = 0) -> Path:
    """Write body_pose_model.pth, hand_pose_model.pth and facenet.pth (synthetic) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for offset, (name, net_cls) in enumerate(
        (("body_pose_model.pth", BodyPoseNet), ("hand_pose_model.pth", HandPoseNet),
         ("facenet.pth", FaceNet))
    ):  # fmt: skip
        torch.save(synthetic_state_dict(net_cls, seed + offset), folder / name)
    return folder
