"""Result images as Telegram accepts them: photos within the Bot API's limits, and the
full-size file as a document when the photo had to be made smaller.

Telegram refuses a photo over 10 MB or whose width + height exceeds 10,000 px, and shows photos
at most 2,560 px on the long side; a document may be up to 50 MB (uploads through the Bot API)."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

PHOTO_MAX_BYTES = 10 * 1024 * 1024
PHOTO_MAX_SIDE_SUM = 10_000
PHOTO_MAX_SIDE = 2560
DOCUMENT_MAX_BYTES = 50 * 1024 * 1024
JPEG_QUALITIES = (92, 85, 75, 60)


@dataclass(frozen=True)
class OutgoingImage:
    """What to upload for one result: the photo, and the full-size file when the photo is less."""

    photo: bytes
    document: bytes | None = None
    document_suffix: str = "png"


def _size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def photo_fits(data: bytes) -> bool:
    """Whether `data` can go out as a photo unchanged."""
    width, height = _size(data)
    return (
        len(data) <= PHOTO_MAX_BYTES
        and width + height <= PHOTO_MAX_SIDE_SUM
        and max(width, height) <= PHOTO_MAX_SIDE
    )


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def photo_jpeg(data: bytes, max_side: int = PHOTO_MAX_SIDE) -> bytes:
    """A JPEG of the image within the photo limits (long side at most `max_side`)."""
    with Image.open(io.BytesIO(data)) as source:
        image = source.convert("RGB")
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    for quality in JPEG_QUALITIES:
        encoded = _jpeg(image, quality)
        if len(encoded) <= PHOTO_MAX_BYTES:
            return encoded
    # Pathological content (pure noise): a smaller picture always fits.
    image.thumbnail((max_side // 2, max_side // 2), Image.Resampling.LANCZOS)
    return _jpeg(image, JPEG_QUALITIES[-1])


def full_size_document(data: bytes) -> tuple[bytes, str]:
    """The full-size file for a document upload: as stored, or a JPEG when over 50 MB."""
    if len(data) <= DOCUMENT_MAX_BYTES:
        return data, "png"
    with Image.open(io.BytesIO(data)) as source:
        image = source.convert("RGB")
    return _jpeg(image, 92), "jpg"


def outgoing(data: bytes) -> OutgoingImage:
    """The photo to send for a stored result, plus its full-size document when it was reduced."""
    if photo_fits(data):
        return OutgoingImage(photo=data)
    document, suffix = full_size_document(data)
    return OutgoingImage(photo=photo_jpeg(data), document=document, document_suffix=suffix)
