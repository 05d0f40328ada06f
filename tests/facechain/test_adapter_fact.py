"""FACT face adapter: real checkpoint layout, scale semantics, exact unload, ControlNet masking."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from facechain import tiny
from facechain.adapter import (
    FaceAttnProcessor,
    FaceTokenDropProcessor,
    get_adapter_scale,
    hide_face_tokens,
    load_face_adapter,
    set_adapter_scale,
    show_face_tokens,
    unload_face_adapter,
)
from facechain.errors import EngineError
from facechain.models.projector import FaceProjector

SD15_WIDTHS = {0: 320, 1: 640, 2: 1280}
SD15_UP_WIDTHS = {1: 1280, 2: 640, 3: 320}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are all per-op overhead: one thread avoids OpenMP syncs (and load spikes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sd15_block_widths() -> dict[str, int]:
    """The 16 SD1.5 transformer blocks with a cross-attention and their widths (reference §2.4)."""
    blocks = {}
    for i in range(3):
        for j in range(2):
            blocks[f"down_blocks.{i}.attentions.{j}.transformer_blocks.0"] = SD15_WIDTHS[i]
    for i in range(1, 4):
        for j in range(3):
            blocks[f"up_blocks.{i}.attentions.{j}.transformer_blocks.0"] = SD15_UP_WIDTHS[i]
    blocks["mid_block.attentions.0.transformer_blocks.0"] = 1280
    return blocks


def real_fact_checkpoint_shapes() -> dict[str, tuple[int, ...]]:
    """Every key and shape of a released FACT adapter checkpoint, written from the reference."""
    shapes: dict[str, tuple[int, ...]] = {}
    for block, c in sd15_block_widths().items():
        p = f"{block}.attn2.processor."
        shapes.update(
            {
                p + "linear.weight": (c, 768),
                p + "linear.bias": (c,),
                p + "attn.to_q.weight": (c, c),
                p + "attn.to_k.weight": (c, c),
                p + "attn.to_v.weight": (c, c),
                p + "attn.to_out.0.weight": (c, c),
                p + "attn.to_out.0.bias": (c,),
                p + "ff.net.0.proj.weight": (8 * c, c),
                p + "ff.net.0.proj.bias": (8 * c,),
                p + "ff.net.2.weight": (c, 4 * c),
                p + "ff.net.2.bias": (c,),
                p + "alpha_attn": (),
                p + "alpha_dense": (),
            }
        )
        for norm in ("norm1", "norm2", "ln"):
            shapes[p + f"{norm}.weight"] = (c,)
            shapes[p + f"{norm}.bias"] = (c,)
    q = "local_fac_prj."
    shapes.update(
        {
            q + "latents": (1, 16, 1024),
            q + "proj_in.weight": (1024, 512),
            q + "proj_in.bias": (1024,),
            q + "proj_out.weight": (768, 1024),
            q + "proj_out.bias": (768,),
            q + "norm_out.weight": (768,),
            q + "norm_out.bias": (768,),
        }
    )
    for i in range(4):
        lp = f"{q}layers.{i}."
        shapes.update(
            {
                lp + "0.norm1.weight": (1024,),
                lp + "0.norm1.bias": (1024,),
                lp + "0.norm2.weight": (1024,),
                lp + "0.norm2.bias": (1024,),
                lp + "0.to_q.weight": (768, 1024),
                lp + "0.to_kv.weight": (1536, 1024),
                lp + "0.to_out.weight": (1024, 768),
                lp + "1.0.weight": (1024,),
                lp + "1.0.bias": (1024,),
                lp + "1.1.weight": (4096, 1024),
                lp + "1.3.weight": (1024, 4096),
            }
        )
    return shapes


def meta_sd15_unet() -> UNet2DConditionModel:
    """Full-size SD1.5 UNet config, parameters on the meta device (no memory, instant)."""
    with torch.device("meta"):
        return UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)


def meta_checkpoint() -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in real_fact_checkpoint_shapes().items()}


class TestRealCheckpointLayout:
    def test_every_real_key_loads_strictly(self) -> None:
        unet = meta_sd15_unet()
        with torch.device("meta"):
            projector = FaceProjector()
        ckpt = meta_checkpoint()
        ckpt["some_other_module.weight"] = torch.empty(
            3, device="meta"
        )  # ignored, not "processor"

        load_face_adapter(unet, ckpt, projector)

        procs = {k: v for k, v in unet.attn_processors.items() if isinstance(v, FaceAttnProcessor)}
        assert len(procs) == 16
        assert set(procs) == {f"{b}.attn2.processor" for b in sd15_block_widths()}
        assert sum(p.numel() for p in projector.parameters()) == pytest.approx(47.5e6, rel=0.01)
        adapter_params = sum(p.numel() for proc in procs.values() for p in proc.parameters())
        assert adapter_params == pytest.approx(208e6, rel=0.01)

    @pytest.mark.parametrize("mutation", ["missing", "unexpected", "shape"])
    def test_mismatching_checkpoint_is_refused_and_unet_untouched(self, mutation: str) -> None:
        unet = meta_sd15_unet()
        with torch.device("meta"):
            projector = FaceProjector()
        ckpt = meta_checkpoint()
        key = "mid_block.attentions.0.transformer_blocks.0.attn2.processor.linear.weight"
        if mutation == "missing":
            del ckpt[key]
        elif mutation == "unexpected":
            ckpt[key.replace("linear", "linear2")] = torch.empty(1, device="meta")
        else:
            ckpt[key] = torch.empty(1280, 1024, device="meta")
        before = dict(unet.attn_processors)

        with pytest.raises(EngineError, match="face adapter"):
            load_face_adapter(unet, ckpt, projector)

        assert unet.attn_processors == before
        assert isinstance(
            unet.mid_block.attentions[0].transformer_blocks[0].norm2, torch.nn.LayerNorm
        )


@pytest.fixture(scope="module")
def tiny_parts() -> tuple[UNet2DConditionModel, dict[str, torch.Tensor]]:
    unet = tiny.unet(seed=0)
    return unet, tiny.adapter_state_dict(unet, seed=0)


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    text = torch.randn(2, 77, tiny.CROSS_DIM, generator=gen)
    face = torch.randn(2, 16, tiny.CROSS_DIM, generator=gen)
    return latents, text, face


class TestTinyAdapter:
    def test_scale_zero_is_plain_sd_and_unload_is_exact(self, tiny_parts) -> None:
        unet, state = tiny_parts
        latents, text, face = _inputs()
        originals = unet.attn_processors
        norm2 = unet.down_blocks[0].attentions[0].transformer_blocks[0].norm2
        with torch.no_grad():
            plain = unet(latents, 10, text).sample

            load_face_adapter(unet, state, tiny.projector(), scale=0.0)
            try:
                zero = unet(latents, 10, torch.cat([text, face], 1)).sample
                set_adapter_scale(unet, 1.0)
                on = unet(latents, 10, torch.cat([text, face], 1)).sample
                other = unet(latents, 10, torch.cat([text, -face], 1)).sample
            finally:
                unload_face_adapter(unet)
            after = unet(latents, 10, text).sample

        assert torch.equal(zero, plain)
        assert (on - plain).abs().max() > 1e-2
        assert (on - other).abs().max() > 1e-3  # the face tokens matter
        assert torch.equal(after, plain)
        restored = unet.attn_processors
        assert all(restored[k] is originals[k] for k in originals)
        assert unet.down_blocks[0].attentions[0].transformer_blocks[0].norm2 is norm2

    def test_loading_keeps_base_norm2_values(self, tiny_parts) -> None:
        unet, state = tiny_parts
        block = unet.up_blocks[3].attentions[2].transformer_blocks[0]
        before = block.norm2.weight.detach().clone()
        shifted = dict(state)
        key = "up_blocks.3.attentions.2.transformer_blocks.0.attn2.processor.ln.weight"
        shifted[key] = state[key] + 1.0
        load_face_adapter(unet, shifted, tiny.projector())
        try:
            proc = unet.attn_processors[
                "up_blocks.3.attentions.2.transformer_blocks.0.attn2.processor"
            ]
            assert torch.equal(proc.ln.weight, shifted[key])
        finally:
            unload_face_adapter(unet)
        assert torch.equal(block.norm2.weight, before)

    def test_scale_list_per_block(self, tiny_parts) -> None:
        unet, state = tiny_parts
        load_face_adapter(unet, state, tiny.projector(), scale=0.5)
        try:
            assert get_adapter_scale(unet) == [0.5] * 16
            set_adapter_scale(unet, [float(i) for i in range(16)])
            assert get_adapter_scale(unet) == [float(i) for i in range(16)]
            with pytest.raises(ValueError, match="16 scales"):
                set_adapter_scale(unet, [1.0, 2.0])
            with pytest.raises(EngineError, match="already loaded"):
                load_face_adapter(unet, state, tiny.projector())
        finally:
            unload_face_adapter(unet)

    def test_projector_gets_checkpoint_weights(self, tiny_parts) -> None:
        unet, state = tiny_parts
        projector = tiny.projector()
        load_face_adapter(unet, state, projector)
        unload_face_adapter(unet)
        assert torch.equal(projector.latents, state["local_fac_prj.latents"])
        out = projector(torch.zeros(1, 144, tiny.PROJECTOR.embedding_dim))
        assert out.shape == (1, 16, tiny.CROSS_DIM)


class TestControlNetMasking:
    def test_controlnet_ignores_face_tokens_and_restores(self) -> None:
        controlnet = tiny.controlnet(tiny.unet(seed=4), seed=4)
        latents, text, face = _inputs()
        cond = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        originals = controlnet.attn_processors
        with torch.no_grad():
            ref = controlnet(latents, 10, text, cond, return_dict=False)
            hide_face_tokens(controlnet)
            assert all(
                isinstance(p, FaceTokenDropProcessor) for p in controlnet.attn_processors.values()
            )
            masked = controlnet(latents, 10, torch.cat([text, face], 1), cond, return_dict=False)
            show_face_tokens(controlnet)
        for a, b in zip([*ref[0], ref[1]], [*masked[0], masked[1]], strict=True):
            assert torch.equal(a, b)
        restored = controlnet.attn_processors
        assert all(restored[k] is originals[k] for k in originals)
        assert all(isinstance(p, AttnProcessor2_0) for p in restored.values())
