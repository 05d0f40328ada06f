"""Writing a trained UNet LoRA: diffusers format (the canonical file) and a Kohya copy.

The diffusers file is what `StableDiffusionPipeline.load_lora_weights` reads; the Kohya copy
(`lora_unet_<module>.lora_down/lora_up/alpha`) is what AUTOMATIC1111, ComfyUI and FaceChain's
own `merge_lora` read. With lora_alpha = rank the Kohya alpha/rank factor is 1, so both files
describe the same update.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
from safetensors.torch import save_file

logger = logging.getLogger(__name__)

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "lora_weights_kohya.safetensors"
MANIFEST_FILE = "training.json"


@dataclass(frozen=True)
class ExportedLoRA:
    """Paths of the written files."""

    diffusers_path: Path
    kohya_path: Path
    manifest_path: Path


def export_lora(
    peft_state_dict: dict[str, torch.Tensor],
    output_dir: Path,
    *,
    rank: int,
    manifest: dict[str, Any],
) -> ExportedLoRA:
    """Write the UNet LoRA (PEFT keys, no `unet.` prefix) in diffusers and Kohya formats."""
    output_dir.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in peft_state_dict.items()
    }
    StableDiffusionPipeline.save_lora_weights(
        save_directory=str(output_dir),
        unet_lora_layers=convert_state_dict_to_diffusers(dict(tensors)),
        safe_serialization=True,
    )
    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in tensors.items()})
    kohya = {
        k: (v.to(torch.float32) if k.endswith(".alpha") else v).contiguous()
        for k, v in kohya.items()
    }
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(rank),
        "ss_base_model_version": "sd_v1",
        "facechain_base_model": str(manifest.get("base_model", "")),
        "facechain_trigger_word": str(manifest.get("trigger_word", "")),
    }
    save_file(kohya, str(output_dir / KOHYA_FILE), metadata=metadata)
    manifest_path = output_dir / MANIFEST_FILE
    manifest_path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
    logger.info("LoRA written to %s (%d tensors)", output_dir, len(tensors))
    return ExportedLoRA(output_dir / DIFFUSERS_FILE, output_dir / KOHYA_FILE, manifest_path)
