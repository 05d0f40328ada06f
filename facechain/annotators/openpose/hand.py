"""Hand boxes from a body and 4-scale hand keypoint inference (controlnet_aux 0.0.6)."""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import cv2
import numpy as np
import torch
from scipy import ndimage

from facechain.annotators.openpose.model import HandPoseNet
from facechain.annotators.openpose.results import BodyResult
from facechain.annotators.openpose.util import (
    first_argmax,
    gaussian_filter,
    pad_right_down_corner,
    smart_resize,
    smart_resize_k,
)

logger = logging.getLogger(__name__)

NUM_HAND_KEYPOINTS = 21
BOXSIZE = 368
SCALES = (0.5, 1.0, 1.5, 2.0)
STRIDE = 8
PAD_VALUE = 128
MAP_SIZE = 128  # the 4 scales are averaged at 128x128
PEAK_THRESHOLD = 0.05
BLUR_SIGMA = 0.8
RATIO_WRIST_ELBOW = 0.33
MIN_BOX = 20
# skimage `label(connectivity=2)` on a 2-D map: diagonal neighbours join a region.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class HandBox(NamedTuple):
    """A square hand crop in detect-image pixels."""

    x: int
    y: int
    size: int
    is_left: bool


def hand_boxes(body: BodyResult, height: int, width: int) -> list[HandBox]:
    """Hand crops of one body (keypoints in pixels): left (5,6,7) first, then right (2,3,4).

    Centre = wrist + 0.33 (wrist - elbow); side = 1.5 max(|wrist-elbow|, 0.9 |elbow-shoulder|);
    the top-left is clamped at 0, the side cut at the image border, boxes under 20 px dropped.
    """
    kp = body.keypoints
    arms = []
    for shoulder, elbow, wrist, is_left in (
        (kp[5], kp[6], kp[7], True),
        (kp[2], kp[3], kp[4], False),
    ):
        if shoulder is not None and elbow is not None and wrist is not None:
            arms.append((shoulder.x, shoulder.y, elbow.x, elbow.y, wrist.x, wrist.y, is_left))
    boxes = []
    for x1, y1, x2, y2, x3, y3, is_left in arms:
        x = x3 + RATIO_WRIST_ELBOW * (x3 - x2)
        y = y3 + RATIO_WRIST_ELBOW * (y3 - y2)
        wrist_elbow = math.sqrt((x3 - x2) ** 2 + (y3 - y2) ** 2)
        elbow_shoulder = math.sqrt((x2 - x1) ** 2 + (y2 - y1) ** 2)
        side = 1.5 * max(wrist_elbow, 0.9 * elbow_shoulder)
        x = max(x - side / 2, 0)
        y = max(y - side / 2, 0)
        side_w = width - x if x + side > width else side
        side_h = height - y if y + side > height else side
        side = min(side_w, side_h)
        if side >= MIN_BOX:
            boxes.append(HandBox(int(x), int(y), int(side), is_left))
    return boxes


def hand_heatmap(net: HandPoseNet, crop_bgr: np.ndarray, device: torch.device) -> np.ndarray:
    """Average of the hand net's maps over 4 input sizes (184, 368, 552, 736), at 128x128.

    Args:
        net: hand net in eval mode on `device`.
        crop_bgr: (h, w, 3) uint8 BGR hand crop.
        device: where the net runs.

    Returns:
        (128, 128, 22) float64 maps.
    """
    blurred = cv2.GaussianBlur(crop_bgr, (0, 0), BLUR_SIGMA)
    average = np.zeros((MAP_SIZE, MAP_SIZE, HandPoseNet.NUM_MAPS))
    for scale in SCALES:
        size = scale * BOXSIZE
        resized = smart_resize(blurred, (size, size))
        padded, pad = pad_right_down_corner(resized, STRIDE, PAD_VALUE)
        data = padded.transpose(2, 0, 1)[None].astype(np.float32) / 256 - 0.5
        with torch.inference_mode():
            out = net(torch.from_numpy(np.ascontiguousarray(data)).to(device))
        heat = out[0].float().cpu().numpy().transpose(1, 2, 0)
        heat = smart_resize_k(heat, fx=STRIDE, fy=STRIDE)
        heat = heat[: padded.shape[0] - pad[2], : padded.shape[1] - pad[3], :]
        heat = smart_resize(heat, (MAP_SIZE, MAP_SIZE))
        average += heat / len(SCALES)
    return average


def hand_peaks(heatmap: np.ndarray, crop_height: int, crop_width: int) -> np.ndarray:
    """Per keypoint 0..20, (x, y) in crop pixels, or (0, 0) when the smoothed map stays <= 0.05.

    Among the 8-connected regions above the threshold, the one with the largest sum of the raw
    map wins (the first in raster order on a tie); its first row-major maximum is the keypoint.

    Args:
        heatmap: (128, 128, >=21) float maps.
        crop_height: crop height in pixels.
        crop_width: crop width in pixels.

    Returns:
        (21, 2) int64 array.
    """
    size_h, size_w = heatmap.shape[:2]
    peaks = []
    for part in range(NUM_HAND_KEYPOINTS):
        raw = np.array(heatmap[:, :, part], dtype=np.float64)
        binary = gaussian_filter(raw) > PEAK_THRESHOLD
        if not binary.any():
            peaks.append([0, 0])
            continue
        # Numbered in raster order of each region's first pixel, as skimage's `label` does; on
        # equal sums the first (lowest-numbered) region wins, as np.argmax does there.
        labels, count = ndimage.label(binary, structure=_EIGHT_CONNECTED)
        sums = [np.sum(raw[labels == i]) for i in range(1, count + 1)]
        best = int(np.argmax(sums)) + 1
        raw[labels != best] = 0
        row, col = first_argmax(raw)
        peaks.append(
            [
                int(float(col) * float(crop_width) / size_w),
                int(float(row) * float(crop_height) / size_h),
            ]
        )
    return np.array(peaks, dtype=np.int64)


def normalise_peaks(
    peaks: np.ndarray, offset_x: int, offset_y: int, height: int, width: int
) -> list[tuple[float, float]]:
    """Crop-pixel peaks -> detect-image fractions; a coordinate < 1e-6 becomes -1 before dividing.

    Computed in float32, as controlnet_aux does.
    """
    p = peaks.astype(np.float32)
    xs = np.where(p[:, 0] < 1e-6, np.float32(-1), p[:, 0] + np.float32(offset_x)) / np.float32(
        width
    )
    ys = np.where(p[:, 1] < 1e-6, np.float32(-1), p[:, 1] + np.float32(offset_y)) / np.float32(
        height
    )
    return [
        (float(x), float(y))
        for x, y in zip(xs.astype(np.float32), ys.astype(np.float32), strict=True)
    ]
