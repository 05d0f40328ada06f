"""The hostile input corpus, generated (never downloaded): broken, huge, odd and disguised files,
nasty names and texts, forged button data. Every builder is deterministic and cheap on memory
(the 10000×10000 PNG is streamed row by row, never held as pixels)."""

from __future__ import annotations

import functools
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FACES = Path(__file__).resolve().parents[1] / "fixtures" / "faces"
SELFIE = "man_pose1.png"
EXIF_UPRIGHT_HEIGHT = 448


@dataclass(frozen=True)
class Upload:
    """One file a user sends: as a document (name, mime) or as a compressed photo."""

    name: str
    data: bytes
    mime: str | None
    as_photo: bool = False


def selfie_image(name: str = SELFIE) -> Image.Image:
    """A fixture portrait as RGB."""
    with Image.open(FACES / name) as im:
        return im.convert("RGB")


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    """An image encoded in a format."""
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose header claims width×height (8-bit grey); `idat` is the compressed data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", idat or zlib.compress(b"\x00" * 64))
        + _chunk(b"IEND", b"")
    )


def png_bomb() -> bytes:
    """Tiny on the wire, 65535×65535 (4.3 gigapixels) once decoded."""
    return png_declaring(65535, 65535)


def real_png(width: int, height: int) -> bytes:
    """A complete, valid grey PNG of width×height, compressed while streaming rows."""
    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\x80" * width
    parts = [compressor.compress(row) for _ in range(height)]
    idat = b"".join(parts) + compressor.flush()
    return png_declaring(width, height, idat)


def truncated_jpeg() -> bytes:
    """The first half of a JPEG selfie."""
    data = encode(selfie_image(), "JPEG", quality=90)
    return data[: len(data) // 2]


def one_pixel_png() -> bytes:
    """A valid 1x1 PNG."""
    return encode(Image.new("RGB", (1, 1), (200, 150, 120)), "PNG")


def animated(fmt: str) -> bytes:
    """Three frames: the selfie first, then two solid frames."""
    first = selfie_image()
    frames = [first, Image.new("RGB", first.size, (0, 0, 0)), Image.new("RGB", first.size, "red")]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=200, loop=0)


def cmyk_jpeg() -> bytes:
    """The selfie as a CMYK JPEG (print workflows)."""
    return encode(selfie_image().convert("CMYK"), "JPEG", quality=92)


def png16() -> bytes:
    """A 16-bit greyscale PNG of the selfie (samples spread over 0..65535)."""
    grey = np.asarray(selfie_image().convert("L"), dtype=np.uint16) * 257
    image = Image.fromarray(grey.astype("<u2"))
    assert image.mode.startswith("I;16"), image.mode
    return encode(image, "PNG")


def exif_rotated_jpeg() -> bytes:
    """A 512×448 selfie stored lying on its side (448×512) with EXIF Orientation 6 ("rotate
    90° clockwise to view"); decoded upright it is 512×448 again."""
    upright = selfie_image().crop((0, 0, 512, EXIF_UPRIGHT_HEIGHT))
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer rotates 90° clockwise
    return encode(sideways, "JPEG", quality=92, exif=exif.tobytes())


def heic_like() -> bytes:
    """The start of an HEIC file (ftyp box, brand heic): a format we do not decode."""
    ftyp = b"ftypheic\x00\x00\x00\x00mif1heicmiaf"
    return struct.pack(">I", len(ftyp) + 4) + ftyp + b"\x00" * 200


def ico() -> bytes:
    """A real image in a format Pillow knows but uploads may not use."""
    return encode(selfie_image().resize((64, 64)), "ICO")


def svg() -> bytes:
    """An SVG with a script: a vector format we never render."""
    return (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        b"<script>alert(1)</script></svg>"
    )


# Files that are not a usable selfie, and the reply each must get (error.<code> keys).
@functools.cache
def rejected() -> dict[str, tuple[Upload, str]]:
    """name -> (upload, reply key); built on first use (the big PNG takes a moment)."""
    return {
        "truncated_jpeg": (
            Upload("half.jpg", truncated_jpeg(), "image/jpeg"),
            "error.not_an_image",
        ),
        "truncated_jpeg_photo": (
            Upload("half.jpg", truncated_jpeg(), None, as_photo=True),
            "error.not_an_image",
        ),
        "png_bomb": (Upload("bomb.png", png_bomb(), "image/png"), "error.image_too_large"),
        "png_10000x10000": (
            Upload("big.png", real_png(10000, 10000), "image/png"),
            "error.image_too_large",
        ),
        "one_pixel": (Upload("dot.png", one_pixel_png(), "image/png"), "error.no_face"),
        "one_pixel_photo": (
            Upload("dot.png", one_pixel_png(), None, as_photo=True),
            "error.no_face",
        ),
        "heic": (Upload("IMG_0001.HEIC", heic_like(), "image/heic"), "error.not_an_image"),
        "ico": (Upload("face.ico", ico(), "image/x-icon"), "error.not_an_image"),
        "svg": (Upload("face.svg", svg(), "image/svg+xml"), "error.not_an_image"),
        "unknown_binary": (
            Upload("photo.jpg", bytes(range(256)) * 16, "application/octet-stream"),
            "error.not_an_image",
        ),
        "zero_bytes": (Upload("empty.jpg", b"", "image/jpeg"), "error.not_an_image"),
        "text_named_jpg": (
            Upload("selfie.jpg", b"definitely not a picture\n" * 10, "image/jpeg"),
            "error.not_an_image",
        ),
    }


# Unusual but valid selfies: decoded like any photo (first frame, CMYK and 16-bit converted,
# EXIF orientation applied), so the face is found and the selfie is kept.
@functools.cache
def accepted() -> dict[str, Upload]:
    """name -> upload of a valid selfie in an unusual encoding."""
    return {
        "animated_gif": Upload("moving.gif", animated("GIF"), "image/gif"),
        "animated_webp": Upload("moving.webp", animated("WEBP"), "image/webp"),
        "cmyk_jpeg": Upload("print.jpg", cmyk_jpeg(), "image/jpeg"),
        "png_16bit": Upload("deep.png", png16(), "image/png"),
        "exif_rotated": Upload("rotated.jpg", exif_rotated_jpeg(), "image/jpeg"),
    }


REJECTED_NAMES = (
    "truncated_jpeg",
    "truncated_jpeg_photo",
    "png_bomb",
    "png_10000x10000",
    "one_pixel",
    "one_pixel_photo",
    "heic",
    "ico",
    "svg",
    "unknown_binary",
    "zero_bytes",
    "text_named_jpg",
)
ACCEPTED_NAMES = ("animated_gif", "animated_webp", "cmyk_jpeg", "png_16bit", "exif_rotated")

# Names and texts people (or attackers) type.
NASTY_STRINGS: dict[str, str] = {
    "sql": "Robert'); DROP TABLE users;--",
    "sql_union": "' OR 1=1 UNION SELECT token FROM users --",
    "html": '<b>bold</b><script>alert("x")</script>&amp;',
    "emoji": "🙂👍🏽‍🔥🧑‍🚀",
    "rtl": "مرحبا بالعالم \u202eevil\u202c שלום",
    "zero_width": "A\u200bB\u200dC\ufeff",
    "format_braces": "{name} {0} {{}} %s %d",
    "nul_and_controls": "x\x00y\x07z",
    "long": "Ж" * 64,
}

# Button data nobody's keyboard ever carried.
FORGED_CALLBACKS: tuple[str, ...] = (
    "",
    ":",
    "x",
    "su",
    "su:",
    "su:abc",
    "su:-1",
    "su:1:2",
    "su:007",
    "su:" + "9" * 40,
    "face:1:999",
    "face:0:-1",
    "lang:xx",
    "lang:../../etc/passwd",
    "fg:maybe",
    "tc:DROP TABLE",
    "sp:all:99999999",
    "sp:<script>:0",
    "hp:-5",
    "tf:1:1",
    "tg:0",
    "💥",
    "\x00\x00",
    "sp:" + "a" * 80,
)
