"""Safe decoding of untrusted image bytes into RGB PIL images."""

from __future__ import annotations

import functools
import io
import logging
import threading
from collections.abc import Callable, Iterator

import numpy as np
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

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


# Pictures decoded at once in this process (bot threads, a worker's tasks, the web API): each
# holds its decoded pixels, so the bound is what keeps a burst of large uploads in memory.
DEFAULT_DECODE_CONCURRENCY = 2
_decode_slots = threading.BoundedSemaphore(DEFAULT_DECODE_CONCURRENCY)

# Pixels converted at a time: wide and transparent modes go to RGB in strips of rows, so the
# conversion's temporaries (float64 for wide modes) stay under 2 MB whatever the picture's size.
STRIP_PIXELS = 1 << 16

_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def configure_decoding(concurrency: int) -> None:
    """Bound how many pictures this process decodes at once (call once, at startup)."""
    global _decode_slots
    if concurrency < 1:
        raise ValueError("decode concurrency must be at least 1")
    _decode_slots = threading.BoundedSemaphore(concurrency)


def load_image(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode untrusted bytes into an upright 8-bit RGB image (first frame if animated).

    At most `configure_decoding(n)` decodes run at once in a process (the others wait); one
    decode holds the decoded picture, the RGB result and a strip of a few MB.

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

    with _decode_slots:
        try:
            rgb = _decode_upright(im)
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(f"decoded image is too large: {exc}") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise NotAnImage(f"truncated or corrupt image: {exc}") from exc
    logger.debug("decoded %s %s %dx%d", im.format, im.mode, rgb.width, rgb.height)
    return rgb


def _decode_upright(im: ImageFile.ImageFile) -> Image.Image:
    """Decode, convert to RGB, then turn as the EXIF orientation says.

    The conversion is per pixel, so turning after it gives the pixels `exif_transpose` then
    `_to_rgb` gave, without `exif_transpose`'s full copy of an upright picture."""
    # Animated GIF/WebP/APNG and multi-page TIFF: the file is positioned on frame 0 after
    # open(); load() decodes only that frame.
    im.load()
    method = _ORIENTATION_TRANSPOSE.get(im.getexif().get(ExifTags.Base.Orientation, 1))
    rgb = _to_rgb(im)
    if rgb is not im:
        # The decoded picture is not needed any more: free it before a turned copy is made.
        im.close()
    return rgb if method is None else rgb.transpose(method)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency is composited on white.

    Wide modes (16-bit, 32-bit, float) are scaled to 8 bits. Wide and transparent pictures are
    converted a strip of rows at a time into the result, so the working memory beyond the
    result is a few MB (converting a 40 MP 16-bit picture whole took about 1 GiB)."""
    if im.mode == "RGB":
        return im
    convert = _strip_converter(im)
    if convert is None:
        return im.convert("RGB")
    if STRIP_PIXELS // im.width >= im.height:
        return convert(im)
    out = Image.new("RGB", im.size)
    for box in _strips(im):
        out.paste(convert(im.crop(box)), box[:2])
    return out


def _strip_converter(im: Image.Image) -> Callable[[Image.Image], Image.Image] | None:
    """The conversion to RGB of a wide or transparent picture's strips (the scale of a wide
    one comes from the whole picture); None for modes Pillow converts without temporaries."""
    if im.mode in _WIDE_MODES:
        # 16-bit PNG/TIFF samples span 0..65535; float images are 0..1 by convention.
        if im.mode == "F":
            peak = 1.0
        else:
            peak = 65535.0 if max(_strip_maxima(im), default=0) > 255 else 255.0
        return functools.partial(_wide_to_rgb, peak=peak)
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode in ("P", "L") and "transparency" in im.info
    )
    return _on_white if has_alpha else None


def _strips(im: Image.Image) -> Iterator[tuple[int, int, int, int]]:
    """The boxes of a picture's strips of rows, top to bottom."""
    width, height = im.size
    rows = max(1, STRIP_PIXELS // width)
    for top in range(0, height, rows):
        yield (0, top, width, min(height, top + rows))


def _strip_maxima(im: Image.Image) -> Iterator[int]:
    # getextrema() knows no big-endian 16-bit mode; numpy reads every wide integer mode.
    for box in _strips(im):
        yield int(np.asarray(im.crop(box)).max(initial=0))


def _wide_to_rgb(strip: Image.Image, peak: float) -> Image.Image:
    arr = np.asarray(strip, dtype=np.float64)
    gray = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def _on_white(strip: Image.Image) -> Image.Image:
    rgba = strip.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


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
