"""Worker-local housekeeping: drop the cached LoRA files and training checkpoints whose data
is gone (/forget, deleted styles), on every gpu or train worker, whatever machine it runs on.

Each worker prunes its own disk at the start of its jobs, at most every `PRUNE_INTERVAL_S`
(the rules are `domain.workerfiles`); no message has to reach every machine. Pruning is best
effort: a failure is logged and the job goes on."""

from __future__ import annotations

import logging
import threading
import time

from domain import workerfiles
from tasks.context import WorkerContext

logger = logging.getLogger(__name__)

PRUNE_INTERVAL_S = 300.0

_lock = threading.Lock()
_last_prune: float | None = None


def prune_worker_files(ctx: WorkerContext) -> tuple[int, int]:
    """Prune this worker's LoRA cache and checkpoint folders now; (files, folders) removed."""
    files = workerfiles.prune_lora_cache(ctx.config.engine.models_dir, ctx.blobs)
    data_dir = ctx.config.storage.data_dir
    ids = workerfiles.checkpoint_ids(data_dir)
    ended = ctx.db.call(workerfiles.finished_trainings, ids) if ids else set()
    folders = workerfiles.remove_checkpoints(data_dir, ended)
    return files, folders


def prune_if_due(ctx: WorkerContext, *, now: float | None = None) -> bool:
    """Prune unless this process did within `PRUNE_INTERVAL_S`; whether it pruned."""
    global _last_prune
    moment = time.monotonic() if now is None else now
    with _lock:
        if _last_prune is not None and moment - _last_prune < PRUNE_INTERVAL_S:
            return False
        _last_prune = moment
    try:
        prune_worker_files(ctx)
    except Exception:  # housekeeping must never fail a job
        logger.exception("pruning worker files failed")
    return True
