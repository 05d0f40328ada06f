"""The image safety checker: diffusers' `StableDiffusionSafetyChecker` (CompVis), scores only.

The published model (`CompVis/stable-diffusion-safety-checker`, CreativeML OpenRAIL-M like the
SD1.5 bases) is a CLIP ViT-L/14 vision tower, a 1024 -> 768 `visual_projection`, and the
embeddings of 17 concepts and 3 "special care" concepts with one cosine threshold each
(`concept_embeds_weights`, `special_care_embeds_weights`). It is the checker every SD1.5
pipeline ships with. The network is diffusers' own class, built from the published
`config.json` (a `CLIPConfig`), and its weights are loaded strictly from the published
`model.safetensors` or `pytorch_model.bin`.

Deliberate difference from diffusers: the pipeline's `forward` blacks out flagged images (what
FaceChain's users complained of, FaceChain issue #126). Here only the decision is used:
`SafetyChecker.check` returns one `SafetyVerdict` per image and the caller drops a flagged
picture; no image is ever altered. The decision is diffusers' (`forward_onnx`, vectorised):
a special-care concept over its threshold adds 0.01 to every concept score, and an image is
flagged when a concept score exceeds `threshold` (0.0 = diffusers' exact decision; a negative
threshold flags more, a positive one less). Scores are not rounded to 3 decimals as diffusers'
eager path does, which only moves decisions within 0.0005 of the threshold.

Preprocessing is the published `preprocessor_config.json` (CLIPImageProcessor): shortest side
to the tower's input size (224) bicubic, centre crop, /255, CLIP mean/std. It runs in the
engine's device and dtype (fp16 on CUDA); the cosines are computed in fp32.

The tiny profile (`SafetyChecker.random`) builds the same class with a narrow tower and random
weights, but with every concept threshold set to 2.0: a cosine is never above 1, so every score
is at most -1 and the tiny checker never flags anything (the README's tiny flow always delivers
its album, whatever the seed). Tests that need decisions give the engine a checker of their own
that implements `ImageChecker`.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import CLIPConfig

from facechain.errors import EngineError, WeightsInvalid
from facechain.models.checkpoint import check_state_dict

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# The published file was written by transformers 4, whose CLIPVisionModel nests a second
# `vision_model.` level that transformers 5 dropped: published keys lose one level on load.
PUBLISHED_PREFIX = "vision_model.vision_model."
MODULE_PREFIX = "vision_model."
# transformers 4 also saved the vision embeddings' position ids (an arange); transformers 5 makes
# the buffer non-persistent. The file may carry it: accepted only if it is exactly that arange.
POSITION_IDS = PUBLISHED_PREFIX + "embeddings.position_ids"
# Tiny profile: thresholds above any cosine, so nothing is ever flagged (see the module doc).
TINY_THRESHOLD = 2.0
BATCH = 8


@dataclass(frozen=True)
class SafetyVerdict:
    """One image's decision: flagged or not, its highest concept score and which concepts."""

    flagged: bool
    score: float
    concepts: tuple[int, ...] = field(default=())


class ImageChecker(Protocol):
    """What the engine and the input screen call: one verdict per image, in order."""

    def check(self, images: Sequence[Image.Image]) -> list[SafetyVerdict]:
        """Decide every image (RGB or any PIL mode)."""
        ...


def preprocess(image: Image.Image, size: int) -> torch.Tensor:
    """CLIPImageProcessor's input for one image.

    Args:
        image: any PIL image (converted to RGB).
        size: the vision tower's `image_size` (224 for the published checker).

    Returns:
        (3, size, size) float32, shortest side resized to `size` (bicubic), centre-cropped,
        (x / 255 - mean) / std.
    """
    image = image.convert("RGB")
    scale = size / min(image.size)
    w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((w, h), Image.Resampling.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std


def module_key(published: str) -> str:
    """The module's name for a key of the published file (one `vision_model.` level less)."""
    if published.startswith(PUBLISHED_PREFIX):
        return MODULE_PREFIX + published[len(PUBLISHED_PREFIX) :]
    return published


def load_strict(
    model: StableDiffusionSafetyChecker, state_dict: Mapping[str, torch.Tensor]
) -> None:
    """Load every tensor of the published layout, refusing missing, extra or reshaped keys in
    one line (WeightsInvalid)."""
    given = dict(state_dict)
    position_ids = given.pop(POSITION_IDS, None)
    given = {module_key(k): v for k, v in given.items()}
    if position_ids is not None and not torch.equal(
        position_ids.flatten().long(), torch.arange(position_ids.numel())
    ):
        raise WeightsInvalid(f"safety checker: {POSITION_IDS} is not 0..n-1")
    try:
        check_state_dict(model.state_dict(), given, "safety checker")
    except EngineError as exc:
        raise WeightsInvalid(str(exc)) from exc
    model.load_state_dict(given, strict=True)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a published weight file (safetensors, or a plain torch state dict)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise WeightsInvalid(f"safety checker: {path} is not a safetensors file") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise WeightsInvalid(f"safety checker: {path} is not a tensor file: {exc}") from exc
    if not isinstance(state, Mapping):
        raise WeightsInvalid(f"safety checker: {path} holds a {type(state).__name__}, not tensors")
    return dict(state)


def tiny_config() -> CLIPConfig:
    """A narrow CLIP config with the published layout (the tiny profile and tests)."""
    return CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )


class SafetyChecker:
    """The checker on a device: `check` images to verdicts (scores only, images untouched)."""

    def __init__(
        self,
        model: StableDiffusionSafetyChecker,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        threshold: float = 0.0,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.threshold = threshold
        self.model = model.to(self.device, dtype).eval().requires_grad_(False)
        self.image_size = int(model.config.vision_config.image_size)

    @classmethod
    def from_dir(
        cls,
        folder: Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        threshold: float = 0.0,
    ) -> SafetyChecker:
        """Build from the published folder: `config.json` plus `model.safetensors` (preferred)
        or `pytorch_model.bin`; WeightsInvalid when a file does not match, in one line."""
        config_file = folder / "config.json"
        weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
        if not config_file.is_file() or weights is None:
            raise WeightsInvalid(
                f"safety checker: {folder} needs config.json and one of {list(WEIGHT_FILES)}"
            )
        try:
            config = CLIPConfig.from_pretrained(str(folder))
        except (OSError, ValueError) as exc:
            raise WeightsInvalid(f"safety checker: bad config.json: {exc}") from exc
        model = StableDiffusionSafetyChecker(config)
        load_strict(model, read_weights(weights))
        logger.info("loaded the safety checker from %s", weights)
        return cls(model, device, dtype, threshold)

    @classmethod
    def random(
        cls, seed: int, device: torch.device | str = "cpu", threshold: float = 0.0
    ) -> SafetyChecker:
        """The tiny profile's checker: seeded random tower, thresholds that never flag."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = StableDiffusionSafetyChecker(tiny_config())
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                model.concept_embeds.copy_(torch.randn(model.concept_embeds.shape, generator=gen))
                model.special_care_embeds.copy_(
                    torch.randn(model.special_care_embeds.shape, generator=gen)
                )
                model.concept_embeds_weights.fill_(TINY_THRESHOLD)
                model.special_care_embeds_weights.fill_(TINY_THRESHOLD)
        return cls(model, device, torch.float32, threshold)

    @torch.no_grad()
    def scores(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """diffusers' concept and special-care scores (cosine - threshold), before adjustment.

        Returns:
            (N, 17) and (N, 3) float32 arrays.
        """
        model = self.model
        concept: list[np.ndarray] = []
        special: list[np.ndarray] = []
        for start in range(0, len(images), BATCH):
            chunk = images[start : start + BATCH]
            x = torch.stack([preprocess(im, self.image_size) for im in chunk])
            pooled = model.vision_model(x.to(self.device, self.dtype))[1]
            embeds = torch.nn.functional.normalize(model.visual_projection(pooled).float())
            concepts = torch.nn.functional.normalize(model.concept_embeds.float())
            specials = torch.nn.functional.normalize(model.special_care_embeds.float())
            concept.append(
                (embeds @ concepts.T - model.concept_embeds_weights.float()).cpu().numpy()
            )
            special.append(
                (embeds @ specials.T - model.special_care_embeds_weights.float()).cpu().numpy()
            )
        return np.concatenate(concept), np.concatenate(special)

    def check(self, images: Sequence[Image.Image]) -> list[SafetyVerdict]:
        """One verdict per image, in order (see the module doc for the decision)."""
        if not images:
            return []
        concept, special = self.scores(images)
        # diffusers: a special-care concept over its threshold makes every concept 0.01 stricter.
        adjusted = concept + 0.01 * (special > 0).any(axis=1, keepdims=True)
        verdicts = []
        for row in adjusted:
            over = tuple(int(i) for i in np.flatnonzero(row > self.threshold))
            verdicts.append(SafetyVerdict(bool(over), float(row.max()), over))
        return verdicts
