"""Resumable training checkpoints, written and read by `accelerate` (`Accelerator.save_state`).

A checkpoint is a folder `checkpoint-<step>`: accelerate's files (optimizer, grad scaler, RNG
states, the step generator registered with `register_for_checkpointing`), the LoRA weights
alone (`lora.safetensors`, written by the save hook `train.py` registers, so the frozen base is
never copied), and `training.json` (step, the fingerprint of config and dataset, losses so far).
It is written under a temporary name and renamed into place, so a crash mid-write never leaves
a half checkpoint that a restart would trust; it is resumed only when its fingerprint matches.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

LORA_FILE = "lora.safetensors"
META_FILE = "training.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainingState:
    """What a checkpoint records besides accelerate's state and the LoRA weights."""

    step: int
    fingerprint: str
    losses: list[float]
    eval_loss_before: float | None


def checkpoint_steps(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in the folder, oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for path in checkpoint_dir.iterdir():
        match = _NAME.match(path.name)
        if match and (path / LORA_FILE).is_file() and (path / META_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(
    accelerator: Accelerator, checkpoint_dir: Path, state: TrainingState, keep: int
) -> Path:
    """Write `checkpoint-<step>` atomically and drop all but the newest `keep`."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir / f"checkpoint-{state.step:07d}"
    tmp = checkpoint_dir / f".tmp-checkpoint-{state.step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.save_state(str(tmp))
    (tmp / META_FILE).write_text(json.dumps(asdict(state)), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for _, old in checkpoint_steps(checkpoint_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("checkpoint saved at step %d", state.step)
    return final


def load_latest_checkpoint(
    accelerator: Accelerator, checkpoint_dir: Path, fingerprint: str
) -> TrainingState | None:
    """Restore the newest checkpoint made for these inputs; None to start from step 0."""
    for step, path in reversed(checkpoint_steps(checkpoint_dir)):
        state = TrainingState(**json.loads((path / META_FILE).read_text(encoding="utf-8")))
        if state.fingerprint != fingerprint:
            logger.warning("checkpoint %s was made for other inputs; ignored", path.name)
            continue
        accelerator.load_state(str(path))
        logger.info("resuming from checkpoint at step %d", step)
        return state
    return None
