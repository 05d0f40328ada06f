"""Fast paths (`facechain.fastpath`, `EngineConfig` flags) on the CPU, tiny profile.

Each must give the eager engine's images (fp32 here, so to the pixel), keep style-LoRA hot swap
working, and be revertible; the adapter's CPU feed-forward chunking must not change its output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
)
from safetensors.torch import save_file

from facechain import fastpath, tiny
from facechain.adapter import FaceAttnProcessor, FaceFeedForward, face_processors
from facechain.engine import Engine, EngineConfig, PortraitRequest, StyleSpec
from facechain.lora import merged_lora, parse_lora


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are all per-op overhead: one thread avoids OpenMP syncs (and load spikes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def crop(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (112, 112, 3), dtype=np.uint8)


STYLE = StyleSpec(name="a", prompt="armor", lora_weight=0.5)


@pytest.fixture(scope="module")
def other_style(tmp_path_factory: pytest.TempPathFactory) -> StyleSpec:
    path = tmp_path_factory.mktemp("lora") / "b.safetensors"
    save_file(tiny.style_lora(tiny.unet(1), tiny.text_encoder(1), seed=9), str(path))
    return StyleSpec(name="b", prompt="armor", lora_path=path, lora_weight=0.7)


def make_engine(**flags: object) -> Engine:
    return Engine.from_config(EngineConfig(profile="tiny", device="cpu", steps=2, **flags))  # type: ignore[arg-type]


def images(engine: Engine, style: StyleSpec, scale: float | None = None) -> np.ndarray:
    out = engine.portraits(
        PortraitRequest(selfies=[crop(0)], style=style, seed=3, num_images=2, adapter_scale=scale)
    )
    return np.stack([np.asarray(p.image).astype(np.int16) for p in out])


@pytest.fixture(scope="module")
def eager(other_style: StyleSpec) -> dict[str, np.ndarray]:
    engine = make_engine()
    return {"a": images(engine, STYLE), "b": images(engine, other_style)}


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert np.abs(got - want).max() <= 1


class TestFeedForwardChunking:
    def test_chunked_rows_match_one_pass(self) -> None:
        torch.manual_seed(0)
        ff = FaceFeedForward(32)
        x = torch.randn(2, 3 * FaceFeedForward.CPU_CHUNK_ROWS // 2 + 7, 32)
        with torch.no_grad():
            whole = ff.net(x)
            chunked = ff(x)
        torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)

    def test_grad_mode_takes_the_plain_path(self) -> None:
        ff = FaceFeedForward(8)
        x = torch.randn(1, 2 * FaceFeedForward.CPU_CHUNK_ROWS, 8, requires_grad=True)
        ff(x).sum().backward()
        assert x.grad is not None

    def test_processor_output_unchanged_by_chunking(self, monkeypatch: pytest.MonkeyPatch):
        torch.manual_seed(0)
        attn2 = Attention(32, cross_attention_dim=16, heads=2, dim_head=16).eval()
        proc = FaceAttnProcessor(32, 16, 2, torch.nn.LayerNorm(32), num_tokens=4, scale=0.5)
        with torch.no_grad():
            proc.alpha_attn.fill_(0.7)
            proc.alpha_dense.fill_(0.9)
        h, context = torch.randn(2, 100, 32), torch.randn(2, 10, 16)
        with torch.no_grad():
            whole = proc(attn2, h, context)
            monkeypatch.setattr(FaceFeedForward, "CPU_CHUNK_ROWS", 16)
            chunked = proc(attn2, h, context)
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)


class TestFusedQKV:
    def test_face_processor_math_unchanged(self) -> None:
        torch.manual_seed(0)
        attn2 = Attention(32, cross_attention_dim=16, heads=2, dim_head=16).eval()
        proc = FaceAttnProcessor(32, 16, 2, torch.nn.LayerNorm(32), num_tokens=4, scale=0.5)
        with torch.no_grad():
            proc.alpha_attn.fill_(0.7)
            proc.alpha_dense.fill_(0.9)
        h, context = torch.randn(2, 64, 32), torch.randn(2, 10, 16)
        with torch.no_grad():
            before = proc(attn2, h, context)
            attn2.fuse_projections()
            proc.cross = FusedAttnProcessor2_0()
            after = proc(attn2, h, context)
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)

    def test_engine_images_and_style_swap(
        self, eager: dict[str, np.ndarray], other_style: StyleSpec
    ) -> None:
        engine = make_engine(fuse_qkv=True)
        unet = engine.resident("film").pipe.unet
        procs = unet.attn_processors
        attn1 = [p for name, p in procs.items() if ".attn1." in name]
        assert attn1
        assert all(isinstance(p, FusedAttnProcessor2_0) for p in attn1)
        faces = face_processors(unet)
        assert len(faces) == 16
        assert all(isinstance(p.cross, FusedAttnProcessor2_0) for p in faces)
        # Style B, then A again: the LoRA merge reaches the fused weights and is undone.
        assert_same(images(engine, other_style), eager["b"])
        assert_same(images(engine, STYLE), eager["a"])

    def test_lora_merge_reaches_fused_weights(self) -> None:
        engine = make_engine(fuse_qkv=True)
        pipe = engine.resident("film").pipe
        attn1 = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
        fused = attn1.to_qkv.weight.detach().clone()
        n = attn1.to_q.out_features
        with merged_lora(pipe.unet, pipe.text_encoder, engine.default_lora, 1.0):
            assert not torch.equal(attn1.to_qkv.weight, fused)
            torch.testing.assert_close(attn1.to_qkv.weight[:n], attn1.to_q.weight)
        assert torch.equal(attn1.to_qkv.weight, fused)

    def test_unfuse_restores_processors(self, eager: dict[str, np.ndarray]) -> None:
        engine = make_engine(fuse_qkv=True)
        unet = engine.resident("film").pipe.unet
        fastpath.unfuse_qkv(unet)
        procs = unet.attn_processors
        assert not any(isinstance(p, FusedAttnProcessor2_0) for p in procs.values())
        assert all(isinstance(p.cross, AttnProcessor2_0) for p in face_processors(unet))
        assert_same(images(engine, STYLE), eager["a"])


class TestChannelsLast:
    def test_engine_images(self, eager: dict[str, np.ndarray], other_style: StyleSpec) -> None:
        engine = make_engine(channels_last=True)
        pipe = engine.resident("film").pipe
        conv = pipe.unet.conv_in.weight
        assert conv.is_contiguous(memory_format=torch.channels_last)
        assert pipe.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        assert engine.controlnet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        assert_same(images(engine, STYLE), eager["a"])
        assert_same(images(engine, other_style), eager["b"])


class TestVaeNanGuard:
    def test_fp16_overflow_is_decoded_again_in_fp32(self) -> None:
        vae = tiny.vae(0)
        with torch.no_grad():
            vae.decoder.conv_in.weight.mul_(3000)  # activations past fp16's 65504
        z = torch.randn(2, 4, 8, 8)
        z[1] *= 300
        with torch.no_grad():
            reference = vae.decode(z).sample
            vae = vae.half()
            raw = vae.decode(z.half()).sample
            assert torch.isfinite(raw[0]).all()
            assert not torch.isfinite(raw[1]).all()
            guard = fastpath.guard_vae_decode(vae)
            out = vae.decode(z.half()).sample
            tuple_out = vae.decode(z.half(), return_dict=False)[0]
        assert guard.fallbacks == 2
        assert torch.isfinite(out).all()
        assert torch.equal(out[0], raw[0])  # finite images are left as they were
        torch.testing.assert_close(out.float(), reference, atol=2e-2, rtol=0)
        assert torch.equal(tuple_out, out)
        fastpath.unguard_vae_decode(vae)
        with torch.no_grad():
            assert not torch.isfinite(vae.decode(z.half()).sample).all()

    def test_engine_images(self, eager: dict[str, np.ndarray]) -> None:
        engine = make_engine(vae_nan_guard=True)
        assert "decode" in vars(engine.resident("film").pipe.vae)
        assert_same(images(engine, STYLE), eager["a"])


@pytest.mark.skipif(
    not torch._dynamo.is_dynamo_supported(), reason="torch.compile unsupported here"
)
class TestCompile:
    def test_style_swap_without_recompiles(
        self, eager: dict[str, np.ndarray], other_style: StyleSpec
    ) -> None:
        """aot_eager keeps it quick on the CPU; the GPU uses inductor (bench/gpu.py)."""
        torch._dynamo.reset()
        engine = make_engine(compile_unet=True, compile_backend="aot_eager")
        try:
            unet = engine.resident("film").pipe.unet
            assert unet._compiled_call_impl is not None
            start = fastpath.compiled_graphs()
            assert_same(images(engine, STYLE), eager["a"])
            compiled = fastpath.compiled_graphs()
            assert compiled > start
            assert_same(images(engine, other_style), eager["b"])
            assert_same(images(engine, STYLE), eager["a"])
            # Style LoRAs change the weights in place: no recompile.
            assert fastpath.compiled_graphs() == compiled
            fastpath.uncompile_unet(unet)
            assert unet._compiled_call_impl is None
            assert_same(images(engine, STYLE), eager["a"])
        finally:
            torch._dynamo.reset()


def test_flags_default_off() -> None:
    cfg = EngineConfig()
    flags = (cfg.channels_last, cfg.fuse_qkv, cfg.compile_unet, cfg.vae_nan_guard)
    assert flags == (False, False, False, False)


def test_add_base_uses_engine_parts(eager: dict[str, np.ndarray]) -> None:
    """A base brought by the caller (bench/gpu.py) runs exactly like a loaded one."""
    engine = make_engine()
    unet = tiny.unet(1)
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=tiny.vae(1),
        text_encoder=tiny.text_encoder(1),
        tokenizer=tiny.tokenizer(),
        unet=unet,
        scheduler=PNDMScheduler.from_config(tiny.SD15_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    engine.add_base("film", pipe, tiny.adapter_state_dict(unet, 1), tiny.projector())
    assert_same(images(engine, STYLE), eager["a"])


def test_lora_parse_smoke(other_style: StyleSpec) -> None:
    assert other_style.lora_path is not None
    assert parse_lora(Path(other_style.lora_path)).layers
