"""Template analysis: the faces of a template photo, ordered left to right (CPU only).

Kept apart from `facechain.inpaint` so the bot can number a user's template faces without
loading torch or diffusers; the worker runs the same code, so face numbers always agree."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from facechain.errors import FaceIndexOutOfRange, FaceTooSmall, TooFewTemplateFaces
from facechain.faces import Face, FaceDetector, default_detector
from facechain.imageio import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, load_image, to_rgb_array

logger = logging.getLogger(__name__)

# Template faces narrower than this are blown up >10x into the working crop: refuse them.
MIN_TEMPLATE_FACE_PX = 48


@dataclass(frozen=True)
class TemplateAnalysis:
    """Faces of a template image, in template pixels, sorted left to right."""

    width: int
    height: int
    faces: list[Face] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Number of detected faces."""
        return len(self.faces)

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        """Integer (x, y, w, h) boxes, left to right (face k is boxes[k - 1])."""
        return [f.int_box() for f in self.faces]

    def kept_faces(self, num_faces: int | None = None) -> list[Face]:
        """The `num_faces` largest faces (all when None), left to right.

        Raises TooFewTemplateFaces when the template has fewer (or no) faces.
        """
        if not self.faces:
            raise TooFewTemplateFaces("no face found in the template", found=0, needed=1)
        if num_faces is None:
            return list(self.faces)
        if num_faces < 1:
            raise ValueError("num_faces must be >= 1")
        if self.count < num_faces:
            raise TooFewTemplateFaces(
                f"the template has {self.count} face(s), {num_faces} needed",
                found=self.count,
                needed=num_faces,
            )
        largest = sorted(self.faces, key=lambda f: f.area, reverse=True)[:num_faces]
        return sorted(largest, key=lambda f: (f.box[0], f.box[1]))

    def select(
        self,
        indices: Sequence[int],
        num_faces: int | None = None,
        min_face_px: float = MIN_TEMPLATE_FACE_PX,
    ) -> list[Face]:
        """Faces for 1-based, left-to-right `indices` among the kept faces.

        Raises TooFewTemplateFaces, FaceIndexOutOfRange or FaceTooSmall.
        """
        if not indices:
            raise ValueError("select at least one template face")
        if len(set(indices)) != len(indices):
            raise ValueError(f"template face indices repeat: {list(indices)}")
        kept = self.kept_faces(num_faces)
        chosen = []
        for index in indices:
            if not 1 <= index <= len(kept):
                raise FaceIndexOutOfRange(
                    f"face {index} does not exist; the template has faces 1 to {len(kept)} "
                    "(left to right)",
                    index=index,
                    available=len(kept),
                )
            face = kept[index - 1]
            if face.size < min_face_px:
                raise FaceTooSmall(
                    f"template face {index} is {face.size:.0f} px wide, at least "
                    f"{min_face_px:.0f} px is needed"
                )
            chosen.append(face)
        return chosen


def analyze_template(
    data_or_image: bytes | Image.Image | np.ndarray,
    *,
    detector: FaceDetector | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> TemplateAnalysis:
    """Detect and order the faces of a template (bytes are decoded safely first)."""
    rgb = as_rgb(data_or_image, max_bytes=max_bytes, max_pixels=max_pixels)
    faces = (detector or default_detector()).detect_faces(rgb)
    logger.info("template %dx%d: %d face(s)", rgb.shape[1], rgb.shape[0], len(faces))
    return TemplateAnalysis(width=rgb.shape[1], height=rgb.shape[0], faces=faces)


def as_rgb(
    data_or_image: bytes | Image.Image | np.ndarray, *, max_bytes: int, max_pixels: int
) -> np.ndarray:
    """(H, W, 3) uint8 RGB from bytes, a PIL image or an RGB array."""
    if isinstance(data_or_image, bytes | bytearray):
        return to_rgb_array(
            load_image(bytes(data_or_image), max_bytes=max_bytes, max_pixels=max_pixels)
        )
    if isinstance(data_or_image, Image.Image):
        return to_rgb_array(data_or_image)
    arr = np.asarray(data_or_image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {arr.shape} {arr.dtype}")
    return arr
