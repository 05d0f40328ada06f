"""Face box from a body and face landmark inference (controlnet_aux 0.0.6)."""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from facechain.annotators.openpose.model import FaceNet
from facechain.annotators.openpose.results import BodyResult
from facechain.annotators.openpose.util import first_argmax, smart_resize

logger = logging.getLogger(__name__)

INPUT_SIZE = 384
PEAK_THRESHOLD = 0.05
MIN_BOX = 20
NOSE, EYES, EARS = 0, (14, 15), (16, 17)


class FaceBox(NamedTuple):
    """A face crop in detect-image pixels; square unless cut by the image border."""

    x: int
    y: int
    size: int


def face_box(body: BodyResult, height: int, width: int) -> FaceBox | None:
    """The face crop of one body (keypoints in pixels), or None.

    Needs the nose and one of the eyes/ears. width = max(3 x Chebyshev(nose, eye),
    1.5 x Chebyshev(nose, ear)); top-left = nose - width clamped at 0; side = 2 width, cut to the
    border when `x + width` (not 2 width: controlnet_aux's test) passes it; dropped under 20 px.
    """
    kp = body.keypoints
    nose = kp[NOSE]
    if nose is None or all(kp[i] is None for i in (*EYES, *EARS)):
        return None
    half = 0.0
    for indices, factor in ((EYES, 3.0), (EARS, 1.5)):
        for i in indices:
            point = kp[i]
            if point is not None:
                d = max(abs(nose.x - point.x), abs(nose.y - point.y))
                half = max(half, d * factor)
    x = max(nose.x - half, 0)
    y = max(nose.y - half, 0)
    side_w = width - x if x + half > width else half * 2
    side_h = height - y if y + half > height else half * 2
    side = min(side_w, side_h)
    if side >= MIN_BOX:
        return FaceBox(int(x), int(y), int(side))
    return None


def face_heatmaps(net: FaceNet, crop_bgr: np.ndarray, device: torch.device) -> np.ndarray:
    """The face net's last-stage maps, bilinearly resized (align_corners) to the crop.

    Args:
        net: face net in eval mode on `device`.
        crop_bgr: (h, w, 3) uint8 BGR face crop.
        device: where the net runs.

    Returns:
        (71, h, w) float32 maps.
    """
    height, width = crop_bgr.shape[:2]
    resized = smart_resize(crop_bgr, (INPUT_SIZE, INPUT_SIZE))
    data = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1) / 256.0 - 0.5
    with torch.inference_mode():
        out = net(data[None].to(device))
        maps = F.interpolate(out, (height, width), mode="bilinear", align_corners=True)
    result: np.ndarray = maps[0].float().cpu().numpy()
    return result


def face_peaks(heatmaps: np.ndarray) -> list[tuple[int, int, int]]:
    """(x, y, channel) of the first maximum of every channel with some value > 0.05.

    Channels with none are skipped (all 71, the last included), so the list length varies.

    Args:
        heatmaps: (C, h, w) float maps.
    """
    peaks = []
    for channel in range(heatmaps.shape[0]):
        m = heatmaps[channel]
        if not (m > PEAK_THRESHOLD).any():
            continue
        row, col = first_argmax(m)
        peaks.append((col, row, channel))
    return peaks
