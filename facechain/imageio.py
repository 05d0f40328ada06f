"""Safe decoding of untrusted image bytes into RGB PIL images."""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facechain.errors import ImageTooLarge, NotAnImage

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000

# Only formats a phone or a browser produces; everything else (EPS, PSD, ICO, ...) is refused
# before its plugin parses a single byte. Multi-picture JPEGs (MPO) are opened by the JPEG plugin.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

# Modes holding more than 8 bits per sample; Pillow's own convert("RGB") clips them instead of
# rescaling, which turns a 16-bit photo white.
_WIDE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def load_image(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode untrusted bytes into an upright 8-bit RGB image (first frame if animated).

    Args:
        data: encoded image (JPEG, PNG, WebP, GIF, BMP, TIFF).
        max_bytes: largest accepted encoded size.
        max_pixels: largest accepted width*height, checked from the header before decoding.

    Raises:
        NotAnImage: empty, unknown, corrupt or truncated data.
        ImageTooLarge: the encoded size or the declared pixel count is over the limit.
    """
    if not data:
        raise NotAnImage("empty file")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"file is {len(data)} bytes, the limit is {max_bytes}")
    # With an explicit `formats` list Pillow only looks at already registered plugins; init()
    # registers WebP/TIFF (idempotent and cheap after the first call).
    Image.init()
    try:
        im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        # Pillow's own guard fires at 2x MAX_IMAGE_PIXELS, before any pixel is decoded.
        raise ImageTooLarge(f"declared image size is too large: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise NotAnImage("unrecognised or unsupported image format") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise NotAnImage(f"corrupt image header: {exc}") from exc

    width, height = im.size
    if width <= 0 or height <= 0:
        raise NotAnImage(f"image has an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} pixels, the limit is {max_pixels} pixels")

    try:
        # Animated GIF/WebP/APNG and multi-page TIFF: the file is positioned on frame 0 after
        # open(); load() decodes only that frame.
        im.load()
        upright = ImageOps.exif_transpose(im)
        rgb = _to_rgb(upright)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"decoded image is too large: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise NotAnImage(f"truncated or corrupt image: {exc}") from exc
    logger.debug("decoded %s %s %dx%d", im.format, im.mode, rgb.width, rgb.height)
    return rgb


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency is composited on white."""
    if im.mode == "RGB":
        return im
    if im.mode in _WIDE_MODES:
        arr = np.asarray(im, dtype=np.float64)
        # 16-bit PNG/TIFF samples span 0..65535; float images are 0..1 by convention.
        peak = 1.0 if im.mode == "F" else (65535.0 if arr.max(initial=0.0) > 255.0 else 255.0)
        gray = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode in ("P", "L") and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Return a writable (H, W, 3) uint8 RGB array of a PIL image."""
    rgb = img if img.mode == "RGB" else _to_rgb(img)
    return np.array(rgb, dtype=np.uint8)


def downscale(img: Image.Image, max_side: int) -> Image.Image:
    """Shrink so the longest side is at most `max_side` (aspect kept); never upscales."""
    if max_side <= 0:
        raise ValueError("max_side must be positive")
    width, height = img.size
    longest = max(width, height)
    if longest <= max_side:
        return img
    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


# Lossless formats stay PNG; JPEG stays JPEG at a quality that hides the re-encoding.
CLEAN_JPEG_QUALITY = 95


def clean_image(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> bytes:
    """The picture without its metadata, as the bytes to store.

    Decoded like `load_image` (the same limits and errors) with the EXIF orientation applied to
    the pixels, then encoded again with nothing but the pixels and the ICC colour profile: EXIF
    (GPS position, camera, time), XMP, IPTC and comments are gone. The ICC profile stays: it
    says how to show the colours and tells nothing about the user. A JPEG stays a JPEG (quality
    95), anything else becomes a PNG (lossless). The same input always gives the same output,
    so a picture sent twice is still recognised as a duplicate.

    Raises:
        NotAnImage, ImageTooLarge: as `load_image`.
    """
    image = load_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as source:
        fmt = source.format
        icc = source.info.get("icc_profile")
    buf = io.BytesIO()
    options: dict[str, object] = {"icc_profile": icc} if icc else {}
    if fmt in ("JPEG", "MPO"):
        image.save(buf, "JPEG", quality=CLEAN_JPEG_QUALITY, **options)
    else:
        image.save(buf, "PNG", **options)
    return buf.getvalue()
