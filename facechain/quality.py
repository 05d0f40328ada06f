"""Selfie quality checks (size, sharpness, head turn, exposure) and the bot-facing analysis."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from facechain.errors import PoorQuality
from facechain.faces import (
    MIN_FACE_PX,
    Face,
    FaceDetector,
    align_face,
    default_detector,
    select_single_face,
)
from facechain.imageio import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    downscale,
    load_image,
    to_rgb_array,
)

logger = logging.getLogger(__name__)

# Thresholds, measured on the six 512 px fixture portraits (blur 491..792, brightness 129..166,
# |yaw| <= 25 deg, face 100..148 px) against degraded copies (Gaussian sigma 4: blur 12..25;
# x0.2 exposure: brightness 25..33; +150 exposure: brightness 236..249).
# Sharpness: variance of the Laplacian on the aligned 128 px face, so it does not depend on
# how large the face is in the photo.
MIN_BLUR = 60.0
# Mean grey level (0..255) of the aligned face.
MIN_BRIGHTNESS = 50.0
MAX_BRIGHTNESS = 225.0
# Head turn (rough estimate from the nose position between the eyes).
MAX_YAW_DEG = 45.0

# Side of the aligned face used for the sharpness and exposure measures; the 16 px border
# (background, black warp padding) is left out.
_QUALITY_CROP = 128
_QUALITY_MARGIN = 16
# Analysis never needs more than this many pixels; bigger uploads are shrunk first.
ANALYSIS_MAX_SIDE = 2048


@dataclass(frozen=True)
class QualityReport:
    """Measured quality of one face; `reasons` holds stable codes for the failed checks."""

    ok: bool
    reasons: list[str]
    face_px: float
    face_fraction: float
    blur: float
    yaw: float
    brightness: float


def estimate_yaw(landmarks: np.ndarray) -> float:
    """Rough head yaw in degrees (0 = frontal, sign = direction) from 5 landmarks.

    The nose tip sits midway between the eyes on a frontal face and moves towards one eye as the
    head turns; its relative position r in [0, 1] along the eye line maps to asin(2r - 1).
    """
    pts = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    eye_vec = pts[1] - pts[0]
    eye_dist = float(np.hypot(*eye_vec))
    if eye_dist < 1e-6:
        return 90.0
    along = float(np.dot(pts[2] - pts[0], eye_vec) / eye_dist**2)
    return math.degrees(math.asin(max(-1.0, min(1.0, 2.0 * along - 1.0))))


def assess_selfie(
    image_rgb: np.ndarray, face: Face, *, min_face_px: float = MIN_FACE_PX
) -> QualityReport:
    """Check whether `face` in an (H, W, 3) uint8 RGB image is usable as an identity source."""
    height, width = image_rgb.shape[:2]
    aligned = align_face(image_rgb, face.landmarks, _QUALITY_CROP)
    grey = cv2.cvtColor(aligned, cv2.COLOR_RGB2GRAY)
    inner = grey[_QUALITY_MARGIN:-_QUALITY_MARGIN, _QUALITY_MARGIN:-_QUALITY_MARGIN]
    blur = float(cv2.Laplacian(inner, cv2.CV_64F).var())
    brightness = float(inner.mean())
    yaw = estimate_yaw(face.landmarks)
    face_fraction = face.area / float(width * height)

    reasons: list[str] = []
    if face.size < min_face_px:
        reasons.append("face_too_small")
    if blur < MIN_BLUR:
        reasons.append("blurry")
    if abs(yaw) > MAX_YAW_DEG:
        reasons.append("face_turned")
    if brightness < MIN_BRIGHTNESS:
        reasons.append("too_dark")
    if brightness > MAX_BRIGHTNESS:
        reasons.append("too_bright")
    return QualityReport(
        ok=not reasons,
        reasons=reasons,
        face_px=face.size,
        face_fraction=face_fraction,
        blur=blur,
        yaw=yaw,
        brightness=brightness,
    )


@dataclass(frozen=True)
class SelfieAnalysis:
    """What a selfie upload contains: original size, faces (original pixels), chosen face quality.

    `quality` is measured on the largest face when there is at least one, else None.
    """

    width: int
    height: int
    faces: list[Face] = field(default_factory=list)
    quality: QualityReport | None = None
    min_face_px: float = MIN_FACE_PX

    def require_single(self) -> Face:
        """The one usable face; raises NoFace, MultipleFaces, FaceTooSmall or PoorQuality."""
        face = select_single_face(self.faces, (self.width, self.height), self.min_face_px)
        if self.quality is not None and not self.quality.ok:
            raise PoorQuality("the photo is not usable: " + ", ".join(self.quality.reasons))
        return face


def analyze_selfie(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_face_px: float = MIN_FACE_PX,
    detector: FaceDetector | None = None,
) -> SelfieAnalysis:
    """Decode an upload, find its faces and grade the largest; CPU only, safe in a thread pool.

    Raises NotAnImage / ImageTooLarge for bad bytes; face count problems are left to
    `SelfieAnalysis.require_single()`.
    """
    image = load_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    width, height = image.size
    work = downscale(image, ANALYSIS_MAX_SIDE)
    factor = width / work.width
    rgb = to_rgb_array(work)
    found = (detector or default_detector()).detect_faces(rgb)
    quality = None
    if found:
        largest = max(found, key=lambda f: f.size)
        # Quality is judged at analysis resolution but the size test uses original pixels.
        graded = assess_selfie(rgb, largest, min_face_px=min_face_px / factor)
        quality = replace(graded, face_px=graded.face_px * factor)
    faces = [f.scaled(factor) for f in found] if factor != 1.0 else found
    logger.info(
        "selfie %dx%d: %d face(s), quality %s",
        width,
        height,
        len(faces),
        "n/a" if quality is None else ("ok" if quality.ok else ",".join(quality.reasons)),
    )
    return SelfieAnalysis(
        width=width, height=height, faces=faces, quality=quality, min_face_px=min_face_px
    )
