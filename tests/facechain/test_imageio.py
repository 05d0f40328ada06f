"""Safe decoding of untrusted uploads."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

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
