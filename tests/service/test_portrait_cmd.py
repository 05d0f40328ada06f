"""`facechain-bot portrait` and `inpaint` on the tiny profile: files written, scores printed,
readable one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import ValidationFailed
from service.cli import main
from service.portrait_cmd import find_style

FACES = Path(__file__).resolve().parents[1] / "fixtures" / "faces"


@pytest.fixture(autouse=True)
def tiny_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ENGINE_PROFILE", "tiny")
    monkeypatch.setenv("ENGINE_STEPS", "2")


class TestFindStyle:
    @pytest.mark.parametrize("query", ["armor", "Armor", "盔甲风", "Доспехи"])
    def test_any_language(self, query: str) -> None:
        assert find_style(query).slug == "armor"

    def test_default(self) -> None:
        assert find_style(None).slug == "t-shirt"

    def test_unknown_lists_choices(self) -> None:
        with pytest.raises(ValidationFailed, match="try one of"):
            find_style("no such style at all")


class TestPortrait:
    def test_writes_n_images_and_prints_scores(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out = tmp_path / "out"
        code = main(
            [
                "portrait",
                str(FACES / "man_pose1.png"),
                "--style",
                "polaroid-style",
                "--num",
                "3",
                "--seed",
                "5",
                "--out",
                str(out),
            ]
        )
        assert code == 0
        written = sorted(out.glob("*.png"))
        assert len(written) == 3
        lines = [ln for ln in capsys.readouterr().out.splitlines() if "similarity=" in ln]
        assert len(lines) == 3
        assert all(Image.open(p).size == (64, 64) for p in written)

    def test_no_face_is_one_line_and_exit_2(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        landscape = tmp_path / "landscape.png"
        gradient = np.linspace(0, 255, 256 * 256 * 3).reshape(256, 256, 3).astype(np.uint8)
        Image.fromarray(gradient).save(landscape)
        code = main(["portrait", str(landscape), "--out", str(tmp_path / "o")])
        assert code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [err[0]]
        assert err[0].startswith("error [no_face]")


class TestInpaint:
    def test_template_size_and_bad_index(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out = tmp_path / "out"
        code = main(
            [
                "inpaint",
                str(FACES / "template_group.jpg"),
                str(FACES / "woman_pose1.png"),
                "--face",
                "1",
                "--seed",
                "1",
                "--out",
                str(out),
            ]
        )
        assert code == 0
        (result,) = out.glob("*.png")
        assert Image.open(result).size == Image.open(FACES / "template_group.jpg").size
        code = main(
            [
                "inpaint",
                str(FACES / "template_group.jpg"),
                str(FACES / "man_pose1.png"),
                "--face",
                "7",
                "--out",
                str(out),
            ]
        )
        assert code == 2
        assert "face_index_out_of_range" in capsys.readouterr().err
