"""Full-size SD1.5 parts with random weights, for speed figures that need no download."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from facechain.adapter import adapter_state_dict_template
from facechain.models.projector import CKPT_PREFIX, FaceProjector

# diffusers' UNet2DConditionModel defaults are SD1.5's layout; these are what differ.
SD15_UNET: dict[str, Any] = {
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "sample_size": 64,
}


def unet() -> UNet2DConditionModel:
    """SD1.5 UNet (860 M parameters), random weights."""
    return UNet2DConditionModel(**SD15_UNET)


def vae() -> AutoencoderKL:
    """SD1.5 VAE, random weights."""
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )


def text_encoder(**config: Any) -> CLIPTextModel:
    """CLIP ViT-L/14 text encoder, random weights (`config` overrides, e.g. a small vocab)."""
    return CLIPTextModel(
        CLIPTextConfig(
            **{
                "hidden_size": 768,
                "intermediate_size": 3072,
                "num_hidden_layers": 12,
                "num_attention_heads": 12,
                "max_position_embeddings": 77,
                "vocab_size": 49408,
                **config,
            }
        )
    )


def random_adapter_state(
    unet: UNet2DConditionModel, projector: FaceProjector
) -> dict[str, torch.Tensor]:
    """Random FACT checkpoint for `unet` with open gates, so the adapter does its full work."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, value in adapter_state_dict_template(unet).items():
        if key.endswith(("alpha_attn", "alpha_dense")):
            state[key] = torch.tensor(0.5)
        elif ".norm" in key or ".ln." in key:
            state[key] = (
                torch.ones(value.shape) if key.endswith("weight") else torch.zeros(value.shape)
            )
        else:
            state[key] = 0.02 * torch.randn(value.shape, generator=gen, dtype=torch.float32)
    state.update({CKPT_PREFIX + k: v for k, v in projector.state_dict().items()})
    dtype = next(unet.parameters()).dtype
    return {k: v.to(dtype) for k, v in state.items()}
