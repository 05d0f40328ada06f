"""The SD1.5 parts a style LoRA is trained on: a private copy of the generation base.

Training uses the very base checkpoint the style will generate with (film or majic), loaded
apart from the engine's resident pipelines: those carry the FACT adapter in their attention
processors and may be fp16, and a LoRA must be learned on the plain base. FaceChain instead
trains on `cv_portrait_model` v4.0 `realistic` and then generates on film (§7) — a mismatch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

from facechain import registry, tiny

logger = logging.getLogger(__name__)

BASE_SPECS = {"film": registry.BASE_FILM, "majic": registry.BASE_MAJIC}
# The engine's tiny bases are seeded per base (facechain.engine._TINY_SEEDS); the same seeds
# here give training the exact weights the tiny engine generates with (a test guards this).
TINY_BASE_SEEDS = {"film": 1, "majic": 2}


@dataclass
class TrainingComponents:
    """Frozen base parts plus the DDPM noise schedule used for the training loss."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler

    @classmethod
    def from_pipeline(cls, pipe: StableDiffusionPipeline) -> TrainingComponents:
        """Take the parts of a plain (adapter-free) SD1.5 pipeline; DDPM from its schedule."""
        return cls(
            unet=pipe.unet,
            vae=pipe.vae,
            text_encoder=pipe.text_encoder,
            tokenizer=pipe.tokenizer,
            noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
        )


def tiny_components(base_model: str = "majic") -> TrainingComponents:
    """The tiny profile's base `base_model` (64 px images, 8x8 latents), seeded like the engine."""
    seed = TINY_BASE_SEEDS[base_model]
    return TrainingComponents(
        unet=tiny.unet(seed),
        vae=tiny.vae(seed),
        text_encoder=tiny.text_encoder(seed),
        tokenizer=tiny.tokenizer(),
        noise_scheduler=DDPMScheduler.from_config(tiny.SD15_SCHEDULER_CONFIG),
    )


def load_training_components(
    base_model: str,
    *,
    profile: Literal["real", "tiny"],
    models_dir: Path,
    dtype: torch.dtype = torch.float32,
) -> TrainingComponents:
    """A fresh copy of base `base_model` for training (real: from the offline model cache).

    Raises:
        WeightsMissing: the real base is not downloaded.
    """
    if base_model not in BASE_SPECS:
        raise ValueError(
            f"unknown base model {base_model!r}; expected one of {sorted(BASE_SPECS)}"
        )
    if profile == "tiny":
        return tiny_components(base_model)
    pipe = StableDiffusionPipeline.from_pretrained(
        registry.resolve(BASE_SPECS[base_model], models_dir),
        dtype=dtype,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    logger.info("loaded base %s for training (%s)", base_model, dtype)
    return TrainingComponents.from_pipeline(pipe)


def training_resolution(profile: Literal["real", "tiny"]) -> int:
    """Training image side: SD1.5's 512, or the tiny profile's 64."""
    return 64 if profile == "tiny" else 512
