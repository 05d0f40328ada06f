"""Resumable training checkpoints: LoRA weights, optimizer, grad scaler, step and RNG state.

Each checkpoint is a folder `checkpoint-<step>` written under a temporary name and renamed into
place, so a crash mid-write never leaves a half checkpoint that a restart would trust. Tensors
go to safetensors and the rest to a `torch.save` file read back with `weights_only=True`.
A checkpoint carries the fingerprint of its config and dataset and is resumed only on a match.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

LORA_FILE = "lora.safetensors"
STATE_FILE = "state.pt"
_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainingState:
    """Everything besides the LoRA tensors needed to continue bit for bit."""

    step: int
    fingerprint: str
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    generator: torch.Tensor
    losses: list[float]
    eval_loss_before: float | None


def checkpoint_steps(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in the folder, oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for path in checkpoint_dir.iterdir():
        match = _NAME.match(path.name)
        if match and (path / LORA_FILE).is_file() and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(
    checkpoint_dir: Path, lora: dict[str, torch.Tensor], state: TrainingState, keep: int
) -> Path:
    """Write `checkpoint-<step>` atomically and drop all but the newest `keep`."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir / f"checkpoint-{state.step:07d}"
    tmp = checkpoint_dir / f".tmp-checkpoint-{state.step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in lora.items()}, str(tmp / LORA_FILE))
    torch.save(
        {
            "step": state.step,
            "fingerprint": state.fingerprint,
            "optimizer": state.optimizer,
            "scaler": state.scaler,
            "generator": state.generator,
            "losses": state.losses,
            "eval_loss_before": state.eval_loss_before,
        },
        tmp / STATE_FILE,
    )
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for _, old in checkpoint_steps(checkpoint_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("checkpoint saved at step %d", state.step)
    return final


def load_latest_checkpoint(
    checkpoint_dir: Path, fingerprint: str
) -> tuple[dict[str, torch.Tensor], TrainingState] | None:
    """The newest checkpoint made for these inputs, or None to start from step 0."""
    for step, path in reversed(checkpoint_steps(checkpoint_dir)):
        raw = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        if raw.get("fingerprint") != fingerprint:
            logger.warning("checkpoint %s was made for other inputs; ignored", path.name)
            continue
        state = TrainingState(
            step=int(raw["step"]),
            fingerprint=str(raw["fingerprint"]),
            optimizer=raw["optimizer"],
            scaler=raw["scaler"],
            generator=raw["generator"],
            losses=[float(x) for x in raw["losses"]],
            eval_loss_before=raw["eval_loss_before"],
        )
        logger.info("resuming from checkpoint at step %d", step)
        return load_file(str(path / LORA_FILE)), state
    return None
