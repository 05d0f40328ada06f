"""Files a gpu worker keeps on its own disk, and pruning the ones whose data is gone.

Two kinds, both named so that any worker can tell on its own whether a file is still wanted,
however many machines there are (no message has to reach every worker):

- cached LoRA files of uploaded and trained styles,
  `<models_dir>/styles/blobs/<blob key>.safetensors` (`domain.loras`): wanted while the blob
  exists in the blob store. Every use checks that the blob still exists (a deleted style's file
  is dropped and never used again), and `prune_lora_cache` drops the cached files whose blob
  was deleted (/forget, a style deleted by an admin).
- training checkpoints, `<DATA_DIR>/trainings/<training id>/` (`tasks.train_style`): wanted while
  the training may still resume from them. The worker removes the folder when the style is stored
  or the training is cancelled; `finished_trainings` picks the folders whose training row is gone
  (/forget) or whose training ended for good (style stored, or cancelled), to be removed.

The worker runs both at the start of its gpu jobs, at most every `PRUNE_INTERVAL_S`
(`tasks.housekeeping`)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.blobstore import BlobStore
from db.models import Job, JobStatus, StyleTraining

logger = logging.getLogger(__name__)

LORA_BLOB_CACHE = ("styles", "blobs")
CHECKPOINTS = "trainings"
_HEX = frozenset("0123456789abcdef")


def lora_cache_dir(models_dir: Path) -> Path:
    """Where a worker keeps the LoRA files of blob-backed styles."""
    return models_dir.joinpath(*LORA_BLOB_CACHE)


def checkpoints_dir(data_dir: Path) -> Path:
    """Where a worker keeps the checkpoint folders of trainings, one per training id."""
    return data_dir / CHECKPOINTS


def prune_lora_cache(models_dir: Path, blobs: BlobStore) -> int:
    """Delete the cached LoRA files whose blob no longer exists; returns how many."""
    folder = lora_cache_dir(models_dir)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.iterdir():
        key = path.name.removesuffix(".safetensors")
        if path.name.startswith(".tmp-"):
            continue  # a file being written right now
        if len(key) != 64 or not set(key) <= _HEX:
            continue
        if not blobs.exists(key):
            path.unlink(missing_ok=True)
            removed += 1
    if removed:
        logger.info("pruned %d cached LoRA files whose blobs are gone", removed)
    return removed


def finished_trainings(session: Session, training_ids: Iterable[int]) -> set[int]:
    """Of these training ids, those whose checkpoints are no longer wanted: the row is gone,
    its style is stored, or its job was cancelled."""
    ids = set(training_ids)
    if not ids:
        return set()
    rows = session.execute(
        select(StyleTraining.id, StyleTraining.style_id, Job.status)
        .outerjoin(Job, Job.id == StyleTraining.job_id)
        .where(StyleTraining.id.in_(ids))
    ).all()
    keep = {
        training_id
        for training_id, style_id, status in rows
        if style_id is None and status is not JobStatus.CANCELLED
    }
    return ids - keep


def checkpoint_ids(data_dir: Path) -> list[int]:
    """The training ids that have a checkpoint folder on this worker."""
    folder = checkpoints_dir(data_dir)
    if not folder.is_dir():
        return []
    return [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]


def remove_checkpoints(data_dir: Path, training_ids: Iterable[int]) -> int:
    """Delete these trainings' checkpoint folders; returns how many there were."""
    removed = 0
    for training_id in training_ids:
        path = checkpoints_dir(data_dir) / str(int(training_id))
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    if removed:
        logger.info("pruned %d checkpoint folders of ended or deleted trainings", removed)
    return removed
