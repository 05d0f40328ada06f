"""Recognise a ready OpenPose skeleton map (torch-free): a user may send one instead of a photo.

An OpenPose map (controlnet_aux `draw_bodypose` / `draw_handpose` / `draw_facepose`, reference
§1.8 and §1.11) is a black canvas with a few thin, flat shapes in a fixed palette: body limbs in
18 fully saturated hues at 60 % brightness, keypoint dots in the same hues at full brightness,
hand edges in 20 HSV hues, blue hand dots and white face dots. A photo, a drawing on paper or
an empty black image has none of these properties together. The test tolerates the JPEG
compression Telegram applies to photos: colours are compared on the inside of the shapes, where
chroma subsampling and ringing hardly reach, with a generous distance.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
from PIL import Image

from facechain.annotators.palette import (
    BODY_COLORS,
    FACE_POINT_COLOR,
    HAND_EDGE_COLORS,
    HAND_POINT_COLOR,
    LIMB_COLORS,
)

logger = logging.getLogger(__name__)

PALETTE = np.array(
    sorted({*BODY_COLORS, *LIMB_COLORS, *HAND_EDGE_COLORS, HAND_POINT_COLOR, FACE_POINT_COLOR}),
    dtype=np.float32,
)
_WHITE = int(np.flatnonzero((PALETTE == FACE_POINT_COLOR).all(axis=1))[0])

# Longest side the test looks at (nearest-neighbour shrink keeps colours pure).
_MAX_SIDE = 512
# A pixel is background below this max-channel value, drawn ("ink") from _INK up.
_DARK = 48
_INK = 64
# The canvas is black: most pixels are dark and those are really black.
_MIN_DARK_FRACTION = 0.7
_MAX_BLACK_LEVEL = 24
# Something is drawn, and not a whole photo's worth.
_MIN_INK_FRACTION = 0.002
# The inside of the shapes is in the palette (RGB distance), mostly coloured, in several hues.
_PALETTE_DISTANCE = 48.0
_MIN_PALETTE_FRACTION = 0.75
_MIN_COLOURED_FRACTION = 0.3
_MIN_HUES = 3
_MIN_PIXELS_PER_HUE = 8
# Pixels compared with the palette at most (an even stride over the shapes).
_MAX_SAMPLES = 20_000


def _rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB, shrunk (nearest) to at most _MAX_SIDE on the longer side."""
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"))
    else:
        array = np.asarray(image)
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        array = array[:, :, :3]
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {array.dtype}")
    height, width = array.shape[:2]
    scale = _MAX_SIDE / max(height, width)
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        array = cv2.resize(array, size, interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(array)


def is_skeleton_map(image: Image.Image | np.ndarray) -> bool:
    """Whether an image is a ready OpenPose skeleton map rather than a photo of a person.

    Args:
        image: PIL image (any mode) or (H, W[, C]) uint8 array, RGB channel order.

    Returns:
        True for a mostly black canvas with flat shapes in the OpenPose palette (body limbs
        and keypoints, hand edges, face dots) in at least three of its hues.
    """
    rgb = _rgb_array(image)
    brightest = rgb.max(axis=2)
    total = brightest.size
    dark = brightest < _DARK
    if dark.sum() < _MIN_DARK_FRACTION * total:
        return False
    if np.percentile(brightest[dark], 90) > _MAX_BLACK_LEVEL:
        return False
    ink = (brightest >= _INK).astype(np.uint8)
    if ink.sum() < _MIN_INK_FRACTION * total:
        return False
    # The inside of the shapes: away from their anti-aliased / JPEG-blurred edges.
    inside = cv2.erode(ink, np.ones((3, 3), np.uint8)).astype(bool)
    pixels = rgb[inside] if inside.sum() >= 50 else rgb[ink.astype(bool)]
    stride = max(1, len(pixels) // _MAX_SAMPLES)
    pixels = pixels[::stride].astype(np.float32)
    distance = np.linalg.norm(pixels[:, None, :] - PALETTE[None, :, :], axis=2)
    nearest = distance.argmin(axis=1)
    close = distance[np.arange(len(pixels)), nearest] <= _PALETTE_DISTANCE
    if close.mean() < _MIN_PALETTE_FRACTION:
        return False
    coloured = close & (nearest != _WHITE)
    if coloured.mean() < _MIN_COLOURED_FRACTION:
        return False
    counts = np.bincount(nearest[coloured], minlength=len(PALETTE))
    hues = int((counts >= max(1, _MIN_PIXELS_PER_HUE // stride)).sum())
    return hues >= _MIN_HUES
