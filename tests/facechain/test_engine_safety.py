"""The engine's safety check: every candidate checked before ranking, flagged ones dropped and the
set filled from the spares, a smaller set when too few are safe, SafetyFlagged when none is; the
checker's weights required (or not) on the real profile."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facechain.engine import (
    Engine,
    EngineConfig,
    PortraitRequest,
    StyleSpec,
    _load_safety,
)
from facechain.errors import SafetyFlagged, WeightsMissing
from facechain.safety import SafetyChecker
from tests.utils.fake_safety import FlagChosen


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_config(EngineConfig(profile="tiny", steps=2, batch_size=6))


STYLE = StyleSpec(name="test", base_model="film", prompt="armor", lora_weight=0.5)


def crop() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)


def request(**kwargs: object) -> PortraitRequest:
    # Scores rank candidate i above i+1, so the kept seeds say which candidates survived.
    order = iter(range(100, 0, -1))
    return PortraitRequest(
        selfies=[crop()],
        style=STYLE,
        seed=10,
        num_images=4,
        num_candidates=6,
        scorer=lambda image: float(next(order)),
        **kwargs,  # type: ignore[arg-type]
    )


class TestOutputs:
    def test_the_tiny_engine_checks_with_the_tiny_checker_and_keeps_every_candidate(
        self, engine: Engine
    ) -> None:
        assert isinstance(engine.safety, SafetyChecker)
        out = engine.portraits(request())
        assert [p.seed for p in out] == [10, 11, 12, 13]
        assert (out.flagged, out.held_back, out.checked) == ([], 0, 6)

    def test_flagged_candidates_are_dropped_before_ranking_and_spares_fill_the_set(
        self, engine: Engine
    ) -> None:
        checker = FlagChosen({0, 2})
        engine.set_safety_checker(checker)
        try:
            out = engine.portraits(request())
        finally:
            engine.set_safety_checker(SafetyChecker.random(11))
        assert checker.calls == [6]  # all six candidates, in one check
        assert [p.seed for p in out] == [11, 13, 14, 15]
        assert len(out.flagged) == 2
        assert out.held_back == 0
        # Only the safe candidates were scored (the scorer saw 4 of them, the best 4 kept).
        assert all(isinstance(p.image, Image.Image) for p in out)

    def test_too_few_safe_candidates_give_a_smaller_set(self, engine: Engine) -> None:
        engine.set_safety_checker(FlagChosen({0, 1, 2}))
        try:
            out = engine.portraits(request())
        finally:
            engine.set_safety_checker(SafetyChecker.random(11))
        assert [p.seed for p in out] == [13, 14, 15]
        assert out.held_back == 1
        assert len(out.flagged) == 3

    def test_nothing_safe_raises_and_returns_nothing(self, engine: Engine) -> None:
        engine.set_safety_checker(FlagChosen(every=True))
        try:
            with pytest.raises(SafetyFlagged) as err:
                engine.portraits(request())
        finally:
            engine.set_safety_checker(SafetyChecker.random(11))
        assert err.value.code == "safety_flagged"
        assert len(err.value.verdicts) == 6

    def test_no_checker_checks_nothing(self, engine: Engine) -> None:
        engine.set_safety_checker(None)
        try:
            out = engine.portraits(request())
            assert (len(out), out.checked) == (4, 0)
            assert not engine.checking
            assert not any(v.flagged for v in engine.check_images([out[0].image]))
        finally:
            engine.set_safety_checker(SafetyChecker.random(11))


class TestWeights:
    def test_required_checker_missing_stops_the_build_and_names_it(self, tmp_path: Path) -> None:
        config = EngineConfig(profile="real", models_dir=tmp_path, device="cpu")
        with pytest.raises(WeightsMissing) as err:
            Engine.from_config(config)
        message = str(err.value)
        assert "safety checker is required (SAFETY_REQUIRED=true)" in message
        assert "facechain-bot models download" in message

    def test_optional_checker_missing_runs_unchecked_with_a_warning(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        config = EngineConfig(
            profile="real", models_dir=tmp_path, device="cpu", safety_required=False
        )
        with caplog.at_level(logging.WARNING, logger="facechain.engine"):
            assert _load_safety(config, torch.device("cpu"), torch.float32) is None
        assert "portraits are NOT checked" in caplog.text

    def test_outputs_off_loads_no_checker(self, tmp_path: Path) -> None:
        config = EngineConfig(profile="real", models_dir=tmp_path, safety_outputs=False)
        assert _load_safety(config, torch.device("cpu"), torch.float32) is None

    def test_real_profile_loads_the_published_folder(self, tmp_path: Path) -> None:
        from facechain import registry
        from tests.facechain.test_safety import synthetic_state, write_published

        src = tmp_path / "src"
        write_published(src / registry.SAFETY_CHECKER.model_id, synthetic_state())
        registry.download_models(tmp_path / "cache", only=["safety_checker"], local_source=src)
        config = EngineConfig(profile="real", models_dir=tmp_path / "cache", safety_threshold=0.2)
        checker = _load_safety(config, torch.device("cpu"), torch.float32)
        assert isinstance(checker, SafetyChecker)
        assert checker.threshold == 0.2


class TestTemplates:
    def test_a_flagged_template_result_raises_and_a_safe_one_is_returned(
        self, engine: Engine
    ) -> None:
        from facechain.inpaint import InpaintRequest
        from tests.facechain.face_data import GROUP, fixture_rgb

        request = InpaintRequest(template=Image.fromarray(fixture_rgb(GROUP)), selfies=[crop()])
        checker = FlagChosen(every=True)
        engine.set_safety_checker(checker)
        try:
            with pytest.raises(SafetyFlagged) as err:
                engine.inpaint(request)
        finally:
            engine.set_safety_checker(SafetyChecker.random(11))
        assert checker.calls == [1]
        assert len(err.value.verdicts) == 1
        assert isinstance(engine.inpaint(request), Image.Image)
