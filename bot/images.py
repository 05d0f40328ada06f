"""Small image jobs for chat messages (face previews, placeholder cards); CPU, call in a thread."""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from facechain.imageio import downscale, load_image

PREVIEW_MAX_SIDE = 1280
# Distinct, high-contrast colours so neighbouring boxes are told apart.
COLOURS = ((255, 64, 64), (64, 160, 255), (255, 200, 0), (80, 220, 100), (220, 90, 255))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _jpeg(image: Image.Image, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def numbered_faces_preview(
    data: bytes,
    boxes: Sequence[Sequence[float]],
    *,
    max_bytes: int,
    max_pixels: int,
) -> bytes:
    """A JPEG of the photo with each (x, y, w, h) box outlined and numbered from 1."""
    image = load_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    full_width = image.width
    image = downscale(image, PREVIEW_MAX_SIDE)
    scale = image.width / full_width
    draw = ImageDraw.Draw(image)
    line = max(3, image.width // 250)
    font = _font(max(18, image.width // 22))
    for n, box in enumerate(boxes, start=1):
        x, y, w, h = (float(v) * scale for v in box)
        colour = COLOURS[(n - 1) % len(COLOURS)]
        draw.rectangle((x, y, x + w, y + h), outline=colour, width=line)
        label = str(n)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        pad = line * 2
        tx = x
        # Put the number above the box, or inside it when the box touches the top edge.
        ty = y - (bottom - top) - 2 * pad if y - (bottom - top) - 2 * pad >= 0 else y
        draw.rectangle(
            (tx, ty, tx + (right - left) + 2 * pad, ty + (bottom - top) + 2 * pad), fill=colour
        )
        draw.text((tx + pad - left, ty + pad - top), label, fill=(0, 0, 0), font=font)
    return _jpeg(image)


@functools.lru_cache(maxsize=256)
def placeholder_card(title: str, side: int = 512) -> bytes:
    """A plain card with a title, for styles or templates that have no thumbnail."""
    image = Image.new("RGB", (side, side), (46, 52, 64))
    draw = ImageDraw.Draw(image)
    draw.rectangle((16, 16, side - 16, side - 16), outline=(136, 192, 208), width=4)
    font = _font(side // 12)
    words, lines, current = title.split(), [], ""
    for word in words:
        candidate = f"{current} {word}".strip()
        if draw.textlength(candidate, font=font) > side - 80 and current:
            lines.append(current)
            current = word
        else:
            current = candidate
    lines.append(current)
    height = len(lines) * (side // 10)
    y = (side - height) // 2
    for text in lines:
        width = draw.textlength(text, font=font)
        draw.text(((side - width) / 2, y), text, fill=(236, 239, 244), font=font)
        y += side // 10
    return _jpeg(image)


def validate_image(data: bytes, *, max_bytes: int, max_pixels: int) -> tuple[int, int]:
    """Decode untrusted bytes (raises NotAnImage / ImageTooLarge); returns (width, height)."""
    image = load_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    return image.width, image.height
