"""`facechain-bot upscale`: ×4 files on the tiny profile, one readable line when weights are
missing on the real profile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.cli import main


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ENGINE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ENGINE_DEVICE", "cpu")


def picture(path: Path, width: int, height: int) -> Path:
    rng = np.random.default_rng(width * height)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


class TestUpscale:
    def test_tiny_profile_writes_4x_files(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv("ENGINE_PROFILE", "tiny")
        square = picture(tmp_path / "square.png", 64, 64)
        wide = picture(tmp_path / "wide.jpg", 40, 24)
        out = tmp_path / "out"
        code = main(["upscale", str(square), str(wide), "--out", str(out), "--tile", "32"])
        assert code == 0
        assert Image.open(out / "square-256.png").size == (256, 256)
        assert Image.open(out / "wide-160.png").size == (160, 96)
        printed = capsys.readouterr().out.splitlines()
        assert printed == [f"{out / 'square-256.png'}\t256x256", f"{out / 'wide-160.png'}\t160x96"]

    def test_size_caps_the_long_side(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("ENGINE_PROFILE", "tiny")
        image = picture(tmp_path / "p.png", 64, 48)
        assert main(["upscale", str(image), "--out", str(tmp_path), "--size", "128"]) == 0
        assert Image.open(tmp_path / "p-128.png").size == (128, 96)

    def test_real_profile_without_weights_is_one_line_and_exit_2(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv("ENGINE_PROFILE", "real")
        image = picture(tmp_path / "p.png", 16, 16)
        code = main(["upscale", str(image), "--out", str(tmp_path / "out")])
        assert code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert err[0].startswith("error [weights_missing]: model upscaler_rrdb")
        assert "facechain-bot models download" in err[0]
        assert not (tmp_path / "out").exists()

    def test_not_an_image_is_one_line_and_exit_2(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv("ENGINE_PROFILE", "tiny")
        bogus = tmp_path / "notes.png"
        bogus.write_bytes(b"not an image")
        assert main(["upscale", str(bogus), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert err[0].startswith("error [not_an_image]")
