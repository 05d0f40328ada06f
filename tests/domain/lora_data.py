"""Test LoRA files: real SD1.5 module names and shapes at rank 1 (a few KB), and broken ones."""

from __future__ import annotations

import io
import pickle

import torch
from safetensors.torch import save

# (Kohya module name, diffusers module path, SD1.5 weight shape (out, in)).
SD15_TARGETS = [
    (
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        (320, 320),
    ),
    (
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
        (320, 768),
    ),
    (
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_out_0",
        "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0",
        (1280, 1280),
    ),
    (
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
        (768, 768),
    ),
]


def kohya_lora(rank: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """A valid Kohya-format SD1.5 LoRA on four modules."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, _, (out_dim, in_dim) in SD15_TARGETS:
        state[f"{name}.lora_down.weight"] = torch.randn(rank, in_dim, generator=gen)
        state[f"{name}.lora_up.weight"] = torch.randn(out_dim, rank, generator=gen) * 0.01
        state[f"{name}.alpha"] = torch.tensor(float(rank))
    return state


def diffusers_lora(rank: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """A valid diffusers/PEFT-format SD1.5 LoRA on the same modules."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for _, path, (out_dim, in_dim) in SD15_TARGETS:
        state[f"{path}.lora_A.weight"] = torch.randn(rank, in_dim, generator=gen)
        state[f"{path}.lora_B.weight"] = torch.randn(out_dim, rank, generator=gen) * 0.01
    return state


def to_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """safetensors bytes of a state dict."""
    return save({k: v.contiguous() for k, v in state.items()})


def torch_pickle_bytes() -> bytes:
    """A LoRA saved with torch.save (zip + pickle), i.e. a .ckpt/.pt upload."""
    buf = io.BytesIO()
    torch.save(kohya_lora(), buf)
    return buf.getvalue()


def legacy_pickle_bytes() -> bytes:
    """A plain pickle stream (protocol 4), as old .bin/.ckpt files are."""
    return pickle.dumps({"lora_unet_x.lora_down.weight": [0.0]}, protocol=4)
