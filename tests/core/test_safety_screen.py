"""The upload screen: the checker in a child process of the front end (torch never in the front
end's own process), verdicts as the in-process screen gives them, and what a missing checker
means under SAFETY_REQUIRED."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.safety import LocalScreen, ProcessScreen, create_screen
from core.settings import AppConfig, EngineSettings, SafetySettings
from facechain.errors import WeightsMissing
from tests.facechain.face_data import encode, landscape_rgb

ROOT = Path(__file__).resolve().parents[2]


def config(tmp_path: Path, profile: str = "tiny", **safety: object) -> AppConfig:
    return AppConfig(
        engine=EngineSettings(profile=profile, models_dir=tmp_path / "models"),  # type: ignore[arg-type]
        safety=SafetySettings(**safety),  # type: ignore[arg-type]
    )


def test_the_screen_module_loads_no_ml_stack() -> None:
    code = (
        "import sys, core.safety, bot.handlers.screening; "
        "print(sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_the_child_process_gives_the_tiny_checkers_verdict(tmp_path: Path) -> None:
    from facechain.safety import SafetyChecker

    data = encode(landscape_rgb(seed=4))
    screen = ProcessScreen(config(tmp_path))
    try:
        screen.warm()
        verdict = screen.check(data)
        again = screen.check(data)
    finally:
        screen.close()
    local = LocalScreen(SafetyChecker.random(11)).check(data)
    assert verdict == again
    assert not verdict.flagged
    assert verdict.score == pytest.approx(local.score, abs=1e-5)


@pytest.mark.slow
def test_a_required_checker_that_is_missing_refuses_in_one_line(tmp_path: Path) -> None:
    screen = ProcessScreen(config(tmp_path, profile="real"))
    try:
        with pytest.raises(WeightsMissing) as err:
            screen.check(encode(landscape_rgb(seed=4)))
    finally:
        screen.close()
    message = str(err.value)
    assert "safety checker is required (SAFETY_REQUIRED=true)" in message
    assert "\n" not in message


def test_inputs_off_means_no_screen(tmp_path: Path) -> None:
    assert create_screen(config(tmp_path, inputs="off")) is None
    assert isinstance(create_screen(config(tmp_path)), ProcessScreen)
