"""Style LoRA training, after diffusers' `examples/text_to_image/train_text_to_image_lora.py`.

As there (and as FaceChain's copy of it, reference §7): the base is frozen; a PEFT LoRA with
r = alpha = rank and gaussian init sits on the UNet's `to_q/to_k/to_v/to_out.0` (self and cross
attention); AdamW (1e-4, betas 0.9/0.999, weight decay 1e-2, eps 1e-8) at a constant rate, no
warm-up; gradients clipped to 1.0; DDPM noise at uniform timesteps and an MSE loss on the
epsilon (or v) target; trainable parameters upcast to fp32 under fp16 (`cast_training_params`).

Differences, and why:
- The frozen text encoder and VAE run once per caption / image (both orientations) instead of
  every step; a step then samples from the stored latent distribution exactly as
  `latent_dist.sample()` would, so the maths are the same and a 512 px step skips the VAE.
- Every random draw comes from one seeded CPU generator whose state is checkpointed, and the
  epoch order is a seeded permutation, so a resumed run continues bit for bit.
- Mixed precision and checkpoints go through `accelerate`, as in the example: the grad scaler,
  autocast and `save_state`/`load_state` (LoRA alone + optimizer + scaler + step generator + RNG)
  land in `checkpoint_dir` every `checkpointing_steps`; a call with the same inputs resumes from
  the newest one.
- A fixed-noise evaluation loss is measured before and after, to report what training did.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers.training_utils import cast_training_params
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from facechain.errors import Cancelled, TrainingInterrupted
from facechain.training.checkpoints import (
    LORA_FILE,
    TrainingState,
    load_latest_checkpoint,
    save_checkpoint,
)
from facechain.training.components import TrainingComponents
from facechain.training.dataset import StyleDataset
from facechain.training.export import export_lora

logger = logging.getLogger(__name__)

ADAPTER_NAME = "style_training"
# Images scored by the before/after evaluation loss (a handful keeps it cheap at 512 px).
EVAL_IMAGES = 8


@dataclass(frozen=True)
class TrainingConfig:
    """Hyper-parameters (FaceChain / diffusers defaults) and the base the LoRA is bound to."""

    base_model: str = "majic"
    rank: int = 32
    learning_rate: float = 1e-4
    # None = num_train_epochs x steps per epoch (FaceChain: 200 epochs of batch 1).
    max_train_steps: int | None = None
    num_train_epochs: int = 200
    train_batch_size: int = 1
    resolution: int = 512
    random_flip: bool = True
    seed: int = 42
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: Literal["no", "fp16"] = "no"
    gradient_checkpointing: bool = False
    target_modules: tuple[str, ...] = ("to_k", "to_q", "to_v", "to_out.0")
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 2
    eval_timesteps: tuple[int, ...] = (100, 300, 500, 700, 900)

    def __post_init__(self) -> None:
        if self.rank < 1 or self.train_batch_size < 1 or self.checkpointing_steps < 1:
            raise ValueError("rank, train_batch_size and checkpointing_steps must be >= 1")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be positive")
        if self.max_train_steps is not None and self.max_train_steps < 1:
            raise ValueError("max_train_steps must be >= 1")

    def steps_per_epoch(self, num_images: int) -> int:
        return math.ceil(num_images / self.train_batch_size)

    def total_steps(self, num_images: int) -> int:
        """Optimizer steps for a dataset of this size."""
        if self.max_train_steps is not None:
            return self.max_train_steps
        return self.num_train_epochs * self.steps_per_epoch(num_images)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (StyleTraining.config)."""
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        data["eval_timesteps"] = list(self.eval_timesteps)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        """Build from JSON, ignoring unknown keys."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("target_modules", "eval_timesteps"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def fingerprint(self, dataset: StyleDataset) -> str:
        """Identity of the training maths; checkpoint cadence does not change it."""
        data = self.to_dict()
        data.pop("checkpointing_steps")
        data.pop("checkpoints_total_limit")
        data["dataset"] = dataset.fingerprint
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class TrainingProgress:
    """Reported after every optimizer step."""

    step: int
    total_steps: int
    loss: float

    @property
    def fraction(self) -> float:
        return self.step / self.total_steps


@dataclass
class TrainingResult:
    """Where the weights are and what training did."""

    lora_path: Path
    kohya_path: Path
    manifest_path: Path
    base_model: str
    rank: int
    steps: int
    losses: list[float] = field(repr=False)
    eval_loss_before: float
    eval_loss_after: float
    resumed_from_step: int | None
    seconds: float
    steps_per_second: float
    style_prompt: str
    trigger_word: str


ProgressFn = Callable[[TrainingProgress], None]
CancelFn = Callable[[], bool]


def _pixels(dataset: StyleDataset) -> torch.Tensor:
    """(N, 3, R, R) float in [-1, 1] (torchvision's ToTensor + Normalize(0.5, 0.5))."""
    arrays = np.stack([np.asarray(ex.image, dtype=np.float32) for ex in dataset.examples])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0


@torch.no_grad()
def _encode_latents(
    components: TrainingComponents, pixels: torch.Tensor, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the VAE posterior for each image and its mirror: (2, N, 4, h, w) each."""
    means, stds = [], []
    for flipped in (False, True):
        batch_mean, batch_std = [], []
        for start in range(0, pixels.shape[0], 4):
            chunk = pixels[start : start + 4]
            chunk = torch.flip(chunk, dims=[3]) if flipped else chunk
            dist = components.vae.encode(chunk.to(device, dtype)).latent_dist
            batch_mean.append(dist.mean.float())
            batch_std.append(dist.std.float())
        means.append(torch.cat(batch_mean))
        stds.append(torch.cat(batch_std))
    return torch.stack(means), torch.stack(stds)


@torch.no_grad()
def _encode_captions(
    components: TrainingComponents, captions: list[str], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """CLIP hidden states of each caption, (N, 77, D), as the frozen encoder gives them."""
    tok = components.tokenizer
    ids = tok(
        captions,
        max_length=tok.model_max_length,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
    ).input_ids
    out: torch.Tensor = components.text_encoder(ids.to(device), return_dict=False)[0].to(dtype)
    return out


def _target(
    components: TrainingComponents,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
) -> torch.Tensor:
    """What the UNet learns to predict: the noise (SD1.5) or the velocity (v-models)."""
    prediction = components.noise_scheduler.config.prediction_type
    if prediction == "epsilon":
        return noise
    if prediction == "v_prediction":
        velocity: torch.Tensor = components.noise_scheduler.get_velocity(latents, noise, timesteps)
        return velocity
    raise ValueError(f"unknown prediction type {prediction!r}")


@torch.no_grad()
def _eval_loss(
    components: TrainingComponents,
    mean: torch.Tensor,
    embeds: torch.Tensor,
    config: TrainingConfig,
    device: torch.device,
    dtype: torch.dtype,
    use_fp16: bool,
) -> float:
    """Noise-prediction MSE on fixed images, timesteps and noise (comparable across calls)."""
    gen = torch.Generator().manual_seed(config.seed + 1)
    n = min(EVAL_IMAGES, mean.shape[1])
    scale = components.vae.config.scaling_factor
    total = 0.0
    count = 0
    for t in config.eval_timesteps:
        latents = (mean[0, :n] * scale).to(device, dtype)
        noise = torch.randn(latents.shape, generator=gen).to(device, dtype)
        timesteps = torch.full((n,), t, dtype=torch.long, device=device)
        noisy = components.noise_scheduler.add_noise(latents, noise, timesteps)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_fp16):
            pred = components.unet(noisy, timesteps, embeds[:n], return_dict=False)[0]
        target = _target(components, latents, noise, timesteps)
        total += float(F.mse_loss(pred.float(), target.float(), reduction="sum"))
        count += target.numel()
    return total / count


class _EpochOrder:
    """Seeded shuffle per epoch (DataLoader(shuffle=True) with a reproducible order)."""

    def __init__(self, num_images: int, batch_size: int, seed: int) -> None:
        self.n = num_images
        self.batch = batch_size
        self.seed = seed
        self.per_epoch = math.ceil(num_images / batch_size)
        self._epoch = -1
        self._perm: list[int] = []

    def indices(self, step: int) -> list[int]:
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            self._perm = torch.randperm(self.n, generator=gen).tolist()
            self._epoch = epoch
        return self._perm[k * self.batch : (k + 1) * self.batch]


class _GeneratorState:
    """The step generator as accelerate checkpoints custom objects (state_dict / load)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["state"])


def _accelerator(unet: Any, generator: torch.Generator, use_fp16: bool, cpu: bool) -> Accelerator:
    """An Accelerator whose checkpoints hold the LoRA alone, not the frozen base."""
    accelerator = Accelerator(
        mixed_precision="fp16" if use_fp16 else "no", cpu=cpu, device_placement=False
    )

    def save_lora(models: list[Any], weights: list[Any], output_dir: str) -> None:
        weights.clear()  # the full UNet state dict accelerate would write
        lora = get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in lora.items()},
            str(Path(output_dir) / LORA_FILE),
        )

    def load_lora(models: list[Any], input_dir: str) -> None:
        models.clear()  # the weights come from the LoRA file, not a full state dict
        state = load_file(str(Path(input_dir) / LORA_FILE))
        result = set_peft_model_state_dict(unet, state, adapter_name=ADAPTER_NAME)
        if result is not None and getattr(result, "unexpected_keys", None):
            raise ValueError(f"checkpoint does not fit the UNet: {result.unexpected_keys[:3]}")

    accelerator.register_save_state_pre_hook(save_lora)
    accelerator.register_load_state_pre_hook(load_lora)
    accelerator.register_for_checkpointing(_GeneratorState(generator))
    return accelerator


def train_style_lora(
    config: TrainingConfig,
    dataset: StyleDataset,
    components: TrainingComponents,
    *,
    checkpoint_dir: Path,
    output_dir: Path | None = None,
    device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    stop: CancelFn | None = None,
) -> TrainingResult:
    """Train a style LoRA on the UNet attention projections and write it to `output_dir`.

    Args:
        config: hyper-parameters; `config.base_model` names the base `components` hold.
        dataset: checked, captioned images at `config.resolution` (see `prepare_dataset`).
        components: a plain SD1.5 base (no adapters). Used in place: moved to the device and
            dtype and frozen; the LoRA adapter is added and removed again before returning.
        checkpoint_dir: where resumable checkpoints go; an earlier run's checkpoint for the
            same config and dataset is resumed from.
        output_dir: where the final files go (default `checkpoint_dir / "final"`).
        device: training device (default CUDA when available).
        progress: called after each optimizer step.
        cancel: polled before each step; True raises Cancelled.
        stop: polled after each step; True saves a checkpoint of the steps done and raises
            TrainingInterrupted (a worker shutting down: the next run resumes from it).

    Raises:
        Cancelled: `cancel()` returned True.
        TrainingInterrupted: `stop()` returned True.
    """
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    if dataset.resolution != config.resolution:
        raise ValueError(
            f"dataset is at {dataset.resolution} px but the config trains at {config.resolution}"
        )
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    use_fp16 = config.mixed_precision == "fp16" and device.type == "cuda"
    if config.mixed_precision == "fp16" and not use_fp16:
        logger.warning("fp16 training needs CUDA; training in fp32 on %s", device)
    weight_dtype = torch.float16 if use_fp16 else torch.float32
    unet = components.unet
    if getattr(unet, "peft_config", None):
        raise ValueError("the UNet already carries LoRA adapters; pass a plain base")

    started = time.monotonic()
    for module in (unet, components.vae, components.text_encoder):
        module.requires_grad_(False)
        module.to(device, dtype=weight_dtype)
    total_steps = config.total_steps(len(dataset))
    mean, std = _encode_latents(components, _pixels(dataset), device, weight_dtype)
    embeds = _encode_captions(
        components, [e.caption for e in dataset.examples], device, weight_dtype
    )
    scaling = components.vae.config.scaling_factor
    num_train_timesteps = components.noise_scheduler.config.num_train_timesteps
    fingerprint = config.fingerprint(dataset)

    # The gaussian init draws from the global RNG; seed it so a run is reproducible.
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(config.seed)
        unet.add_adapter(
            LoraConfig(
                r=config.rank,
                lora_alpha=config.rank,
                init_lora_weights="gaussian",
                target_modules=list(config.target_modules),
            ),
            adapter_name=ADAPTER_NAME,
        )
    accelerator: Accelerator | None = None
    try:
        if use_fp16:
            # Only the LoRA parameters train; fp32 masters keep AdamW's small updates.
            cast_training_params(unet, dtype=torch.float32)
        params = [p for p in unet.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params,
            lr=config.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.adam_weight_decay,
            eps=config.adam_epsilon,
        )
        generator = torch.Generator().manual_seed(config.seed)
        order = _EpochOrder(len(dataset), config.train_batch_size, config.seed)
        accelerator = _accelerator(unet, generator, use_fp16, cpu=device.type == "cpu")
        # Autocast around the UNet's forward and the grad scaler on the optimizer (fp16 only).
        model, optimizer = accelerator.prepare(unet, optimizer)

        start_step = 0
        resumed_from: int | None = None
        losses: list[float] = []
        state = load_latest_checkpoint(accelerator, checkpoint_dir, fingerprint)
        if state is not None:
            start_step = resumed_from = state.step
            losses = list(state.losses)
            eval_before = state.eval_loss_before
        else:
            eval_before = None
        if eval_before is None:
            eval_before = _eval_loss(
                components, mean, embeds, config, device, weight_dtype, use_fp16
            )

        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        loop_started = time.monotonic()
        for step in range(start_step, total_steps):
            if cancel is not None and cancel():
                raise Cancelled(f"training cancelled at step {step} of {total_steps}")
            idx = torch.tensor(order.indices(step))
            if config.random_flip:
                flips = (torch.rand(len(idx), generator=generator) < 0.5).long()
            else:
                flips = torch.zeros(len(idx), dtype=torch.long)
            eps_latent = torch.randn((len(idx), *mean.shape[2:]), generator=generator)
            latents = (mean[flips, idx] + std[flips, idx] * eps_latent.to(device)) * scaling
            latents = latents.to(weight_dtype)
            noise = torch.randn(latents.shape, generator=generator).to(device, weight_dtype)
            timesteps = torch.randint(0, num_train_timesteps, (len(idx),), generator=generator).to(
                device
            )
            noisy = components.noise_scheduler.add_noise(latents, noise, timesteps)
            pred = model(noisy, timesteps, embeds[idx.to(device)], return_dict=False)[0]
            target = _target(components, latents, noise, timesteps)
            loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            done = step + 1
            checkpoint = TrainingState(
                step=done, fingerprint=fingerprint, losses=losses, eval_loss_before=eval_before
            )
            saved = done % config.checkpointing_steps == 0 and done < total_steps
            if saved:
                save_checkpoint(
                    accelerator, checkpoint_dir, checkpoint, keep=config.checkpoints_total_limit
                )
            if progress is not None:
                progress(TrainingProgress(done, total_steps, losses[-1]))
            if stop is not None and done < total_steps and stop():
                if not saved:
                    keep = config.checkpoints_total_limit
                    save_checkpoint(accelerator, checkpoint_dir, checkpoint, keep=keep)
                raise TrainingInterrupted(
                    f"training stopped at step {done} of {total_steps}; checkpoint saved", done
                )
        loop_seconds = time.monotonic() - loop_started
        unet.eval()
        if config.gradient_checkpointing:
            unet.disable_gradient_checkpointing()
        eval_after = _eval_loss(components, mean, embeds, config, device, weight_dtype, use_fp16)
        lora_state = get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)
        manifest = {
            "base_model": config.base_model,
            "trigger_word": dataset.trigger_word,
            "style_prompt": dataset.style_prompt,
            "rank": config.rank,
            "steps": total_steps,
            "images": len(dataset),
            "resolution": config.resolution,
            "eval_loss_before": eval_before,
            "eval_loss_after": eval_after,
            "config": config.to_dict(),
            "dataset": dataset.fingerprint,
        }
        exported = export_lora(
            lora_state,
            output_dir or checkpoint_dir / "final",
            rank=config.rank,
            manifest=manifest,
        )
    finally:
        unet.eval()
        if accelerator is not None:
            # Takes autocast off the UNet's forward again and drops accelerate's references.
            accelerator.unwrap_model(unet, keep_fp32_wrapper=False)
            accelerator.free_memory()
        # Unwraps the LoRA layers too (delete_adapters would leave `base_layer` wrappers),
        # so the caller gets back the very module tree it passed in.
        unet.unload_lora()
    steps_run = total_steps - start_step
    logger.info(
        "trained %d steps (%d this run) on %s: eval loss %.5f -> %.5f",
        total_steps,
        steps_run,
        config.base_model,
        eval_before,
        eval_after,
    )
    return TrainingResult(
        lora_path=exported.diffusers_path,
        kohya_path=exported.kohya_path,
        manifest_path=exported.manifest_path,
        base_model=config.base_model,
        rank=config.rank,
        steps=total_steps,
        losses=losses,
        eval_loss_before=eval_before,
        eval_loss_after=eval_after,
        resumed_from_step=resumed_from,
        seconds=time.monotonic() - started,
        steps_per_second=steps_run / loop_seconds if loop_seconds > 0 and steps_run else 0.0,
        style_prompt=dataset.style_prompt,
        trigger_word=dataset.trigger_word,
    )
