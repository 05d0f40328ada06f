"""Image helpers of controlnet_aux 0.0.6 whose exact numerics the OpenPose maps depend on.

The cv2 resizes (LANCZOS4 when enlarging, AREA otherwise) and scipy's Gaussian are part of the
result: torch's interpolate or a mirror-padded blur would move peaks by a pixel.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

GAUSS_SIGMA = 3.0
GAUSS_TRUNCATE = 4.0


def hwc3(image: np.ndarray) -> np.ndarray:
    """uint8 gray/(H,W,1)/RGB/RGBA -> (H,W,3) uint8; RGBA is composited on white.

    Raises:
        ValueError: not uint8, or not 1, 3 or 4 channels.
    """
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected (H,W), (H,W,1), (H,W,3) or (H,W,4), got {image.shape}")
    channels = image.shape[2]
    if channels == 3:
        return image
    if channels == 1:
        return np.concatenate([image, image, image], axis=2)
    color = image[:, :, 0:3].astype(np.float32)
    alpha = image[:, :, 3:4].astype(np.float32) / 255.0
    blended = color * alpha + 255.0 * (1.0 - alpha)
    out: np.ndarray = blended.clip(0, 255).astype(np.uint8)
    return out


def resized_shape(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(H, W) of `resize_image`: shorter side to `resolution`, both rounded to multiples of 64."""
    k = float(resolution) / min(float(height), float(width))
    # np.round rounds ties to even (10.5 -> 10), as controlnet_aux does.
    out_h = int(np.round(float(height) * k / 64.0)) * 64
    out_w = int(np.round(float(width) * k / 64.0)) * 64
    return out_h, out_w


def resize_image(image: np.ndarray, resolution: int) -> np.ndarray:
    """controlnet_aux `resize_image`: LANCZOS4 when enlarging (k > 1), else AREA (k == 1 too)."""
    height, width = image.shape[:2]
    k = float(resolution) / min(float(height), float(width))
    out_h, out_w = resized_shape(height, width, resolution)
    interpolation = cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA
    return cv2.resize(image, (out_w, out_h), interpolation=interpolation)


def _resize_to(x: np.ndarray, out_h: float, out_w: float) -> np.ndarray:
    """Resize to int(out_w) x int(out_h), per channel unless the array has 1 or 3 channels."""
    in_h, in_w = x.shape[:2]
    channels = 1 if x.ndim == 2 else x.shape[2]
    if channels in (1, 3):
        k = float(out_h + out_w) / float(in_h + in_w)
        interpolation = cv2.INTER_AREA if k < 1 else cv2.INTER_LANCZOS4
        return cv2.resize(x, (int(out_w), int(out_h)), interpolation=interpolation)
    planes = [_resize_to(np.ascontiguousarray(x[:, :, i]), out_h, out_w) for i in range(channels)]
    return np.stack(planes, axis=2)


def smart_resize(x: np.ndarray, size: tuple[float, float]) -> np.ndarray:
    """Resize (H,W[,C]) to size = (H_target, W_target) (truncated to ints), as controlnet_aux."""
    return _resize_to(x, size[0], size[1])


def smart_resize_k(x: np.ndarray, fx: float, fy: float) -> np.ndarray:
    """Resize (H,W[,C]) by factors fx (width) and fy (height), as controlnet_aux."""
    in_h, in_w = x.shape[:2]
    return _resize_to(x, in_h * fy, in_w * fx)


def pad_right_down_corner(
    image: np.ndarray, stride: int = 8, value: int = 128
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Pad bottom/right with `value` to `stride` multiples; -> (image, (0, 0, down, right))."""
    height, width = image.shape[:2]
    down = 0 if height % stride == 0 else stride - height % stride
    right = 0 if width % stride == 0 else stride - width % stride
    if down or right:
        padded = np.full(
            (height + down, width + right, *image.shape[2:]), value, dtype=image.dtype
        )
        padded[:height, :width] = image
        image = padded
    return image, (0, 0, down, right)


def gaussian_filter(x: np.ndarray) -> np.ndarray:
    """scipy.ndimage.gaussian_filter(x, sigma=3) of a 2-D map, as controlnet_aux calls it.

    scipy itself, not a re-creation: a cv2 separable filter with the same taps differs in the
    last bits, enough to break the tie of a peak centred exactly between two pixels (scipy gives
    both the same value, so both are kept as peaks).
    """
    out: np.ndarray = ndimage.gaussian_filter(
        np.asarray(x, dtype=np.float64), sigma=GAUSS_SIGMA, truncate=GAUSS_TRUNCATE
    )
    return out


def first_argmax(x: np.ndarray) -> tuple[int, int]:
    """(row, col) of the first maximum in row-major order."""
    row, col = np.unravel_index(int(np.argmax(x)), x.shape)
    return int(row), int(col)
