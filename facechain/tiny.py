"""The `tiny` profile: seeded random models with the SD1.5 / FACT layout, small enough for CPU.

Same classes and code paths as the real profile; only the widths and the weights differ. The UNet
keeps SD1.5's block layout (3 cross-attention down blocks + 1 plain, mid with cross-attention,
1 plain + 3 cross-attention up blocks, 2 layers per block) so the adapter has its 16 attn2 blocks.
The face-token width follows the UNet's `cross_attention_dim` (768 in SD1.5, 32 here).
"""

from __future__ import annotations

import json
import logging
import tempfile
import zlib
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from facechain.adapter import adapter_state_dict_template
from facechain.models.projector import CKPT_PREFIX, FaceProjector, ProjectorConfig
from facechain.models.transface import TransFaceConfig, TransFaceViT

logger = logging.getLogger(__name__)

CROSS_DIM = 32
TRANSFACE = TransFaceConfig(embed_dim=32, depth=2, num_heads=2, num_features=32)
PROJECTOR = ProjectorConfig(
    dim=32,
    depth=1,
    dim_head=8,
    heads=2,
    num_queries=16,
    embedding_dim=32,
    output_dim=CROSS_DIM,
    ff_mult=2,
)
# SD1.5's scheduler config (scheduler/scheduler_config.json of runwayml/stable-diffusion-v1-5).
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "skip_prk_steps": True,
}


def _seeded(seed: int) -> torch.Generator:
    """A CPU generator for explicit draws (module init uses the global RNG inside `fork_rng`)."""
    return torch.Generator().manual_seed(seed)


def unet(seed: int = 0) -> UNet2DConditionModel:
    """Tiny SD1.5-layout UNet (8x8 latents for 64 px images)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 32, 64, 64),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=CROSS_DIM,
            attention_head_dim=2,
            norm_num_groups=8,
        )
    return model.eval()


def vae(seed: int = 0) -> AutoencoderKL:
    """Tiny 8x-downsampling VAE."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=64,
        )
    return model.eval()


def _byte_chars() -> list[str]:
    """GPT-2/CLIP byte-to-unicode table (the 256 base symbols of the BPE vocabulary)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def tokenizer() -> CLIPTokenizer:
    """Character-level CLIP tokenizer built from a locally written vocabulary (no hub access)."""
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        # transformers 5 ignores vocab_file/merges_file kwargs; from_pretrained reads the folder.
        Path(tmp, "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        Path(tmp, "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        tok: CLIPTokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
        return tok


def text_encoder(seed: int = 0) -> CLIPTextModel:
    """Tiny CLIP text encoder matching `tokenizer()`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = CLIPTextConfig(
            vocab_size=514,
            hidden_size=CROSS_DIM,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=512,
            eos_token_id=513,
            pad_token_id=513,
        )
        model = CLIPTextModel(config)
    return model.eval()


def controlnet(base_unet: UNet2DConditionModel, seed: int = 0) -> ControlNetModel:
    """Tiny ControlNet with random (not zero) output convolutions so a pose visibly matters."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ControlNetModel.from_unet(
            base_unet, conditioning_embedding_out_channels=(8, 8, 8, 8)
        )
    gen = _seeded(seed + 1)
    with torch.no_grad():
        for conv in [*model.controlnet_down_blocks, model.controlnet_mid_block]:
            conv.weight.copy_(0.05 * torch.randn(conv.weight.shape, generator=gen))
    return model.eval()


def transface(seed: int = 0) -> TransFaceViT:
    """Tiny TransFace (144 tokens of width 32), random, eval."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TransFaceViT(TRANSFACE)
    return model.eval().requires_grad_(False)


def projector() -> FaceProjector:
    """Tiny projector shell; its weights come from `adapter_state_dict`."""
    return FaceProjector(PROJECTOR)


def adapter_state_dict(base_unet: UNet2DConditionModel, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random FACT checkpoint for `base_unet`: processor keys plus `local_fac_prj.` keys."""
    state = {k: torch.empty_like(v) for k, v in adapter_state_dict_template(base_unet).items()}
    proj = projector()
    state.update({CKPT_PREFIX + k: torch.empty_like(v) for k, v in proj.state_dict().items()})
    base = base_unet.state_dict()
    gen = _seeded(seed)
    for key in sorted(state):
        value = state[key]
        noise = torch.randn(value.shape, generator=gen)
        if ".processor.ln." in key:
            # `ln` = the base norm2, so that scale 0 reproduces plain SD exactly.
            state[key] = base[key.replace("attn2.processor.ln.", "norm2.")].clone()
        elif key.endswith(("alpha_attn", "alpha_dense")):
            state[key] = 0.5 + 0.1 * noise  # open gates: at 0 (their init) the adapter is inert
        elif value.ndim == 1 and ".norm" in key and key.endswith("weight"):
            state[key] = 1.0 + 0.1 * noise
        elif value.ndim == 1:
            state[key] = 0.05 * noise
        else:
            state[key] = noise / value[0].numel() ** 0.5
    return state


def style_lora(
    base_unet: UNet2DConditionModel, base_text_encoder: CLIPTextModel, seed: int = 0, rank: int = 2
) -> dict[str, torch.Tensor]:
    """Random Kohya-format LoRA on every attention projection of the UNet and text encoder."""
    gen = _seeded(seed)
    state: dict[str, torch.Tensor] = {}
    targets: list[tuple[str, nn.Linear]] = []
    for name, module in base_unet.named_modules():
        if isinstance(module, nn.Linear) and name.endswith(("to_q", "to_k", "to_v", "to_out.0")):
            targets.append(("lora_unet_" + name.replace(".", "_"), module))
    for name, module in base_text_encoder.named_modules():
        if isinstance(module, nn.Linear) and name.endswith(("q_proj", "v_proj")):
            # Kohya names keep CLIP's `text_model.` level, which transformers 5 no longer has.
            targets.append(("lora_te_text_model_" + name.replace(".", "_"), module))
    for key, module in targets:
        state[f"{key}.lora_down.weight"] = 0.3 * torch.randn(
            rank, module.in_features, generator=gen
        )
        state[f"{key}.lora_up.weight"] = 0.3 * torch.randn(
            module.out_features, rank, generator=gen
        )
        state[f"{key}.alpha"] = torch.tensor(float(rank) / 2)
    return state


def catalog_style_lora(folder: Path, slug: str) -> Path:
    """A catalog style's stand-in LoRA: `style_lora` seeded by the slug, written once to
    `folder/<slug>.safetensors`, then loaded by the same code as a real file."""
    from safetensors.torch import save_file

    path = folder / f"{slug}.safetensors"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        state = style_lora(unet(seed=0), text_encoder(seed=0), seed=zlib.crc32(slug.encode()))
        tmp = path.with_suffix(".tmp")
        save_file(state, str(tmp))
        tmp.replace(path)
    return path
