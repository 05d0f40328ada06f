"""Test data for the face modules: the fixture portraits and synthetic images built from them."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
from PIL import Image

FACES_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "faces"
PORTRAITS = ("man_pose1", "man_pose2", "man_pose3", "woman_pose1", "woman_pose2", "woman_pose3")
GROUP = "template_group.jpg"
# Counted by eye and by the detector: the bride (left) and the groom (right).
GROUP_FACE_COUNT = 2


@functools.cache
def fixture_bytes(name: str) -> bytes:
    """Raw bytes of a fixture file (`.png` is added to bare portrait names)."""
    filename = name if "." in name else f"{name}.png"
    return (FACES_DIR / filename).read_bytes()


def fixture_rgb(name: str) -> np.ndarray:
    """A fixture decoded to an (H, W, 3) uint8 RGB array."""
    with Image.open(io.BytesIO(fixture_bytes(name))) as im:
        return np.array(im.convert("RGB"))


def encode(image: Image.Image | np.ndarray, fmt: str = "PNG", **params: object) -> bytes:
    """Encode an image or RGB array to bytes."""
    pil = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buf = io.BytesIO()
    pil.save(buf, fmt, **params)
    return buf.getvalue()


def landscape_rgb(width: int = 640, height: int = 480, seed: int = 0) -> np.ndarray:
    """A faceless synthetic scene: sky gradient, hills, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    sky = np.stack([120 + 60 * yy / height, 170 + 40 * yy / height, 235 - 20 * yy / height], -1)
    hill = (yy > height * 0.55 + 40 * np.sin(xx / 70.0))[..., None]
    ground = np.stack([60 + 0 * yy, 130 + 30 * np.cos(xx / 23.0), 50 + 0 * yy], -1)
    img = np.where(hill, ground, sky) + rng.normal(0, 6, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)
