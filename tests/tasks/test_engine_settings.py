"""The GPU fast-path settings reach the engine a worker builds (and the template inpainter)."""

from __future__ import annotations

import pytest
import torch

from core.settings import AppConfig, EngineSettings
from facechain.inpaint import TemplateInpainter
from tasks.context import build_engine


def test_fast_path_settings_are_off_by_default() -> None:
    engine = build_engine(AppConfig(engine=EngineSettings(profile="tiny", device="cpu")))
    cfg = engine.config
    assert not (cfg.channels_last)
    assert not (cfg.fuse_qkv)
    assert not (cfg.compile_unet)
    assert not (cfg.vae_nan_guard)
    assert cfg.compile_mode is None


def test_fast_path_settings_from_the_environment_reach_the_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENGINE_CHANNELS_LAST", "true")
    monkeypatch.setenv("ENGINE_FUSE_QKV", "1")
    monkeypatch.setenv("ENGINE_VAE_NAN_GUARD", "yes")
    monkeypatch.setenv("ENGINE_COMPILE_MODE", "reduce-overhead")
    engine = build_engine(AppConfig(engine=EngineSettings(profile="tiny", device="cpu")))
    cfg = engine.config
    assert cfg.channels_last
    assert cfg.fuse_qkv
    assert cfg.vae_nan_guard
    assert cfg.compile_mode == "reduce-overhead"
    assert not cfg.compile_unet
    # The pose ControlNet is converted at build, and so is the template's Canny ControlNet.
    conv = engine.controlnet.controlnet_cond_embedding.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    canny = TemplateInpainter(engine).canny_controlnet
    weight = canny.controlnet_cond_embedding.conv_in.weight
    assert weight.dim() == 4
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_contiguous()


def test_an_unknown_compile_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINE_COMPILE_MODE", "fastest")
    with pytest.raises(ValueError, match="compile_mode"):
        EngineSettings()
