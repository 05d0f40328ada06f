"""Style LoRA training speed: optimizer steps per second.

CPU tiny profile: the tiny SD1.5-layout base at 64 px on the six fixture portraits, rank 4.
CUDA (when available): a full-size SD1.5 UNet / VAE / CLIP-L text encoder with random weights
(same compute as the real bases) at 512x512, rank 32, batch 1, fp16 weights with fp32 LoRA
parameters, as a gpu worker trains. Prints the loss before/after and steps/s.

Run: `python bench/training.py [--steps N] [--gpu-steps N] [--threads N]`.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import sd15
import torch
from diffusers import DDPMScheduler

from facechain import tiny
from facechain.training import (
    StyleDataset,
    TrainingComponents,
    TrainingConfig,
    prepare_dataset,
    tiny_components,
    train_style_lora,
)

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "faces"
PORTRAITS = ("man_pose1", "man_pose2", "man_pose3", "woman_pose1", "woman_pose2", "woman_pose3")


def fixture_dataset(resolution: int) -> StyleDataset:
    """The six fixture portraits as a training set."""
    images = [(FIXTURES / f"{name}.png").read_bytes() for name in PORTRAITS]
    return prepare_dataset(images, trigger_word="benchstyle", resolution=resolution)


def full_size_components(dtype: torch.dtype) -> TrainingComponents:
    """SD1.5-sized parts with random weights (no download needed for a speed figure)."""
    unet = sd15.unet()
    vae = sd15.vae()
    text = sd15.text_encoder(vocab_size=514, bos_token_id=512, eos_token_id=513, pad_token_id=513)
    return TrainingComponents(
        unet=unet.to(dtype),
        vae=vae.to(dtype),
        text_encoder=text.to(dtype),
        tokenizer=tiny.tokenizer(),
        noise_scheduler=DDPMScheduler.from_config(tiny.SD15_SCHEDULER_CONFIG),
    )


def run(
    label: str,
    components: TrainingComponents,
    config: TrainingConfig,
    dataset: StyleDataset,
    device: str,
) -> None:
    """Train once and print the figures."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        result = train_style_lora(
            config, dataset, components, checkpoint_dir=Path(tmp), device=device
        )
        total = time.monotonic() - started
    print(
        f"{label}: {result.steps} steps, {result.steps_per_second:.2f} steps/s "
        f"(loop), {total:.1f} s total incl. encode/eval/export; "
        f"eval loss {result.eval_loss_before:.5f} -> {result.eval_loss_after:.5f}; "
        f"train loss first {result.losses[0]:.4f} last {result.losses[-1]:.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="CPU tiny-profile steps")
    parser.add_argument("--gpu-steps", type=int, default=200, help="CUDA full-size steps")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    tiny_config = TrainingConfig(
        base_model="majic",
        rank=4,
        resolution=64,
        max_train_steps=args.steps,
        learning_rate=1e-3,
        checkpointing_steps=max(1, args.steps // 2),
    )
    run(
        "cpu tiny 64px rank 4 lr 1e-3",
        tiny_components("majic"),
        tiny_config,
        fixture_dataset(64),
        "cpu",
    )

    if not torch.cuda.is_available():
        print("cuda full-size 512px: skipped (no CUDA device)")
        return
    gpu_config = TrainingConfig(
        base_model="majic",
        rank=32,
        resolution=512,
        max_train_steps=args.gpu_steps,
        mixed_precision="fp16",
        checkpointing_steps=max(1, args.gpu_steps // 2),
    )
    torch.cuda.reset_peak_memory_stats()
    run(
        f"cuda full-size 512px rank 32 fp16 ({torch.cuda.get_device_name()})",
        full_size_components(torch.float16),
        gpu_config,
        fixture_dataset(512),
        "cuda",
    )
    print(f"cuda peak memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
