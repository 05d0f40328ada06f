"""Safe decoding of untrusted uploads."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from facechain import imageio
from facechain.errors import ImageTooLarge, NotAnImage
from facechain.imageio import downscale, load_image, to_rgb_array
from tests.facechain.face_data import encode, fixture_bytes, fixture_rgb


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


class TestLoadImage:
    def test_fixture_portrait_is_rgb(self) -> None:
        img = load_image(fixture_bytes("man_pose1"))
        assert img.mode == "RGB"
        assert img.size == (512, 512)

    def test_group_jpeg(self) -> None:
        assert load_image(fixture_bytes("template_group.jpg")).size == (1680, 1260)

    @pytest.mark.parametrize(
        "data",
        [b"", b"Hello, this is a text file renamed to photo.jpg\n", b"\xff\xd8\xff\xe0garbage"],
        ids=["empty", "text", "jpeg-magic-garbage"],
    )
    def test_not_an_image(self, data: bytes) -> None:
        with pytest.raises(NotAnImage):
            load_image(data)

    def test_truncated_jpeg(self) -> None:
        data = fixture_bytes("template_group.jpg")
        with pytest.raises(NotAnImage, match="truncated"):
            load_image(data[: len(data) // 3])

    def test_unsupported_format_refused(self) -> None:
        with pytest.raises(NotAnImage):
            load_image(encode(Image.new("RGB", (8, 8)), "ICO"))

    def test_byte_limit(self) -> None:
        with pytest.raises(ImageTooLarge):
            load_image(fixture_bytes("man_pose1"), max_bytes=1000)

    def test_png_bomb_rejected_without_decoding(self) -> None:
        bomb = png_with_declared_size(100_000, 100_000)
        tracemalloc.start()
        try:
            with pytest.raises(ImageTooLarge):
                load_image(bomb)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 5_000_000

    def test_pixel_limit_checked_from_header(self) -> None:
        # Under Pillow's own bomb guard but over ours: refused before any pixel is decoded.
        with pytest.raises(ImageTooLarge, match="8000x8000"):
            load_image(png_with_declared_size(8000, 8000))
        with pytest.raises(ImageTooLarge):
            load_image(fixture_bytes("man_pose1"), max_pixels=512 * 511)

    def test_exif_orientation_applied(self) -> None:
        original = Image.open(io.BytesIO(fixture_bytes("man_pose1"))).convert("RGB")
        # Stored turned a quarter counter-clockwise; orientation 6 says "rotate 90 CW to view".
        stored = original.rotate(90, expand=True)
        exif = Image.Exif()
        exif[0x0112] = 6
        loaded = load_image(encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
        assert loaded.size == original.size
        diff = np.abs(to_rgb_array(loaded).astype(int) - np.asarray(original).astype(int))
        assert diff.mean() < 3.0

    def test_cmyk_jpeg(self) -> None:
        rgb = fixture_rgb("woman_pose1")
        cmyk = Image.fromarray(rgb).convert("CMYK")
        loaded = load_image(encode(cmyk, "JPEG", quality=95))
        assert loaded.mode == "RGB"
        assert np.abs(to_rgb_array(loaded).astype(int) - rgb.astype(int)).mean() < 6.0

    def test_16bit_grey_png_is_rescaled(self) -> None:
        ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (32, 1))
        loaded = to_rgb_array(load_image(encode(Image.fromarray(ramp), "PNG")))
        assert loaded.shape == (32, 256, 3)
        assert loaded[0, 0, 0] == 0
        assert loaded[0, -1, 0] == 255
        assert 120 <= loaded[0, 128, 0] <= 135

    def test_16bit_rgb_png(self) -> None:
        rgb16 = (fixture_rgb("man_pose1").astype(np.uint16) * 257)[:, :, ::-1]
        ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb16))
        assert ok
        loaded = to_rgb_array(load_image(png.tobytes()))
        assert np.abs(loaded.astype(int) - fixture_rgb("man_pose1").astype(int)).max() <= 1

    def test_animated_gif_first_frame(self) -> None:
        frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 0, 255))]
        data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
        loaded = to_rgb_array(load_image(data))
        assert loaded.shape == (30, 40, 3)
        assert tuple(loaded[15, 20]) == (255, 0, 0)

    def test_animated_webp_first_frame(self) -> None:
        frames = [Image.new("RGB", (40, 30), c) for c in ((0, 200, 0), (200, 0, 200))]
        data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
        loaded = to_rgb_array(load_image(data))
        assert tuple(loaded[15, 20]) == (0, 200, 0)

    @pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
    def test_transparency_on_white(self, mode: str) -> None:
        img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
        img.putpixel((0, 0), (0, 0, 0, 255))
        if mode == "LA":
            img = img.convert("LA")
        elif mode == "PA":
            img = img.convert("PA")
        fmt = "TIFF" if mode == "PA" else "PNG"
        arr = to_rgb_array(load_image(encode(img, fmt)))
        assert tuple(arr[5, 5]) == (255, 255, 255)
        assert tuple(arr[0, 0]) == (0, 0, 0)

    @pytest.mark.parametrize("mode", ["L", "1", "P"])
    def test_other_modes(self, mode: str) -> None:
        img = Image.fromarray(fixture_rgb("man_pose1")).convert(mode)
        loaded = load_image(encode(img, "PNG"))
        assert loaded.mode == "RGB"
        assert loaded.size == (512, 512)


class TestHelpers:
    def test_to_rgb_array(self) -> None:
        arr = to_rgb_array(Image.new("L", (7, 5), 9))
        assert arr.shape == (5, 7, 3)
        assert arr.dtype == np.uint8
        arr[0, 0] = 1  # writable copy

    def test_downscale(self) -> None:
        img = Image.new("RGB", (1680, 1260))
        small = downscale(img, 840)
        assert small.size == (840, 630)
        assert downscale(small, 1000) is small


def _old_load(data: bytes) -> Image.Image:
    """The conversion as it was at dbcd432 (whole-picture float64 arrays), the reference."""
    im = Image.open(io.BytesIO(data))
    im.load()
    upright = ImageOps.exif_transpose(im)
    if upright.mode == "RGB":
        return upright
    if upright.mode in {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}:
        arr = np.asarray(upright, dtype=np.float64)
        peak = 1.0 if upright.mode == "F" else (65535.0 if arr.max(initial=0.0) > 255.0 else 255.0)
        gray = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    has_alpha = upright.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        upright.mode in ("P", "L") and "transparency" in upright.info
    )
    if has_alpha:
        rgba = upright.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return upright.convert("RGB")


def _wide_samples(
    dtype: type, low: float, high: float, size: tuple[int, int] = (97, 61)
) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.uniform(low, high, size=(size[1], size[0])).astype(dtype)


def _pictures() -> dict[str, bytes]:
    """Every mode the decoder converts, in the format a phone, a scanner or a tool writes it."""
    face = fixture_rgb("man_pose1")[:61, :97]
    rgba = np.dstack([face, _wide_samples(np.uint8, 0, 255)])
    rgba16 = (rgba.astype(np.uint16) * 257 + 3)[:, :, [2, 1, 0, 3]]
    ok, png16 = cv2.imencode(".png", np.ascontiguousarray(rgba16))
    assert ok
    exif = Image.Exif()
    exif[0x0112] = 6
    grey16 = Image.fromarray(_wide_samples(np.uint16, 0, 65535))
    palette = Image.fromarray(face).convert("P")
    grey = Image.fromarray(face).convert("L")
    return {
        "I;16 png": encode(grey16, "PNG"),
        "I;16 png, 8-bit range": encode(Image.fromarray(_wide_samples(np.uint16, 0, 250)), "PNG"),
        "I;16 png, turned": encode(grey16, "PNG", exif=exif.tobytes()),
        "I;16B tiff": encode(grey16.convert("I").convert("I;16B"), "TIFF"),
        "I tiff": encode(Image.fromarray(_wide_samples(np.int32, -9000, 90000)), "TIFF"),
        "F tiff": encode(Image.fromarray(_wide_samples(np.float32, -0.2, 1.3)), "TIFF"),
        "RGBA 16-bit png": png16.tobytes(),
        "RGB 16-bit png": cv2.imencode(".png", np.ascontiguousarray(rgba16[:, :, :3]))[
            1
        ].tobytes(),
        "RGBA png": encode(Image.fromarray(rgba), "PNG"),
        "RGBA png, turned": encode(Image.fromarray(rgba), "PNG", exif=exif.tobytes()),
        "LA png": encode(Image.fromarray(rgba).convert("LA"), "PNG"),
        "PA tiff": encode(Image.fromarray(rgba).convert("PA"), "TIFF"),
        "P png with transparency": encode(palette, "PNG", transparency=3),
        "L png with transparency": encode(grey, "PNG", transparency=40),
        "P png": encode(palette, "PNG"),
        "L png": encode(grey, "PNG"),
        "1 png": encode(grey.convert("1"), "PNG"),
        "CMYK jpeg, turned": encode(
            Image.fromarray(face).convert("CMYK"), "JPEG", exif=exif.tobytes()
        ),
        "RGB jpeg, turned": encode(Image.fromarray(face), "JPEG", exif=exif.tobytes()),
    }


class TestBoundedDecoding:
    """Wide and transparent pictures are converted in strips: the same pixels, bounded memory."""

    @pytest.mark.parametrize("name", list(_pictures()))
    @pytest.mark.parametrize("strip_pixels", [1 << 20, 97 * 7, 50])
    def test_same_pixels_as_the_whole_picture_conversion(
        self, name: str, strip_pixels: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Strips of 7 rows (the last one shorter), of one row (narrower than the picture) and
        # the whole picture at once.
        monkeypatch.setattr(imageio, "STRIP_PIXELS", strip_pixels)
        data = _pictures()[name]
        expected = _old_load(data)
        loaded = load_image(data)
        assert loaded.mode == "RGB"
        assert loaded.size == expected.size
        assert loaded.tobytes() == expected.tobytes()

    @pytest.mark.parametrize(
        ("name", "source_bytes_per_pixel"),
        [("I;16 png", 2), ("F tiff", 4), ("I tiff", 4), ("RGBA png", 4)],
    )
    def test_peak_memory_is_the_picture_and_the_result(
        self, name: str, source_bytes_per_pixel: int, tmp_path: Path
    ) -> None:
        # A fresh interpreter decodes a 6 MP picture; its resident high-water mark may rise by
        # the decoded picture, the RGB result (Pillow keeps 4 bytes a pixel) and at most 2 bytes
        # a pixel more (before: several whole float64 copies, about 30 bytes a pixel).
        width, height = 3000, 2000
        ramp = np.linspace(0.0, 1.0, width * height).reshape(height, width)
        picture = {
            "I;16 png": lambda: encode(Image.fromarray((ramp * 65535).astype(np.uint16)), "PNG"),
            "F tiff": lambda: encode(Image.fromarray(ramp.astype(np.float32)), "TIFF"),
            "I tiff": lambda: encode(Image.fromarray((ramp * 9e5).astype(np.int32)), "TIFF"),
            "RGBA png": lambda: encode(
                Image.fromarray((ramp * 255).astype(np.uint8)).convert("RGBA"), "PNG"
            ),
        }[name]()
        path = tmp_path / "picture"
        path.write_bytes(picture)
        # VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's (pytest's) peak.
        script = (
            "import re, sys\n"
            "from facechain.imageio import load_image\n"
            "def peak():\n"
            "    status = open('/proc/self/status').read()\n"
            "    return int(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1)) * 1024\n"
            "data = open(sys.argv[1], 'rb').read()\n"
            "before = peak()\n"
            "image = load_image(data, max_bytes=1 << 30)\n"
            "print(peak() - before)\n"
        )
        run = subprocess.run(
            [sys.executable, "-c", script, str(path)],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        rise = int(run.stdout.strip())
        allowed = (source_bytes_per_pixel + 4 + 2) * width * height
        assert rise <= allowed, f"peak rose {rise / 2**20:.0f} MiB, allowed {allowed / 2**20:.0f}"

    def test_decodes_at_once_are_bounded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # The bot's threads, a worker's tasks and the web API all decode through load_image.
        running = 0
        most = 0
        lock = threading.Lock()
        real = imageio._to_rgb

        def slow(im: Image.Image) -> Image.Image:
            nonlocal running, most
            with lock:
                running += 1
                most = max(most, running)
            time.sleep(0.05)
            with lock:
                running -= 1
            return real(im)

        monkeypatch.setattr(imageio, "_to_rgb", slow)
        imageio.configure_decoding(2)
        try:
            data = fixture_bytes("man_pose1")
            with ThreadPoolExecutor(6) as pool:
                results = list(pool.map(lambda _: load_image(data).size, range(6)))
        finally:
            imageio.configure_decoding(imageio.DEFAULT_DECODE_CONCURRENCY)
        assert results == [(512, 512)] * 6
        assert most == 2
