"""gpu task `style.train`: a user's pictures in, a new style (LoRA) of origin `trained` out.

Checkpoints live under `<DATA_DIR>/trainings/<training id>/`, so a redelivery after a worker
crash resumes where the last checkpoint left off; they are removed once the style is stored.
The style is registered in its own transaction before the job is marked succeeded, and a
redelivery that finds it registered only finishes the job.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import torch
from celery import Task, shared_task
from celery.exceptions import Reject

from db.models import FINAL_STATUSES, JobStatus
from domain import lifecycle, privacy, trainings
from domain.outbox import transact
from domain.trainings import TrainedLoRA, TrainingInputs
from facechain.errors import Cancelled, TrainingInterrupted
from facechain.training import (
    DatasetLimits,
    TrainingConfig,
    TrainingProgress,
    TrainingResult,
    load_training_components,
    prepare_dataset,
    train_style_lora,
    training_resolution,
)
from tasks.context import WorkerContext, get_context
from tasks.housekeeping import prune_if_due
from tasks.jobs import JobOutcome, JobSnapshot, ProgressReporter, run_gpu_job
from tasks.warm import STOPPING, WorkerStopping

logger = logging.getLogger(__name__)

# Share of the job's progress bar the optimizer steps fill; export and registration the rest.
TRAIN_PROGRESS_SHARE = 0.95
TRAINING_ROW_INTERVAL_S = 5.0


def checkpoint_dir(ctx: WorkerContext, training_id: int) -> Path:
    """Worker-local folder of a training's checkpoints and final files."""
    return ctx.config.storage.data_dir / "trainings" / str(training_id)


def _training_config(
    ctx: WorkerContext, inputs: TrainingInputs, device: torch.device
) -> TrainingConfig:
    """Stored overrides on top of the defaults; base, resolution and precision from the worker."""
    profile = ctx.config.engine.profile
    values = dict(inputs.config)
    values["base_model"] = inputs.base_model
    values["resolution"] = training_resolution(profile)
    values["mixed_precision"] = "fp16" if device.type == "cuda" and profile == "real" else "no"
    return TrainingConfig.from_dict(values)


class _TrainingReporter:
    """Maps optimizer steps onto the job's progress and the training row (throttled)."""

    def __init__(self, ctx: WorkerContext, training_id: int, reporter: ProgressReporter) -> None:
        self.ctx = ctx
        self.training_id = training_id
        self.reporter = reporter
        self._last_row = 0.0

    def __call__(self, p: TrainingProgress) -> None:
        self.reporter.report(TRAIN_PROGRESS_SHARE * p.fraction)
        now = time.monotonic()
        if now - self._last_row >= TRAINING_ROW_INTERVAL_S or p.step == p.total_steps:
            self._last_row = now
            self.ctx.db.call(trainings.record_step, self.training_id, p.step, p.loss)


def _register(
    ctx: WorkerContext,
    job: JobSnapshot,
    inputs: TrainingInputs,
    result: TrainingResult,
    thumbnail: bytes,
) -> int:
    """Store the LoRA and add the user's new style (and its `style.trained` event)."""
    trained = TrainedLoRA(
        lora=result.lora_path.read_bytes(),
        kohya=result.kohya_path.read_bytes(),
        thumbnail=thumbnail,
        style_prompt=result.style_prompt,
        base_model=result.base_model,
        trigger_word=result.trigger_word,
        steps=result.steps,
        rank=result.rank,
        losses=result.losses,
        eval_loss_before=result.eval_loss_before,
        eval_loss_after=result.eval_loss_after,
    )
    return transact(
        ctx.db, ctx.publisher, trainings.register_style, ctx.blobs, job.id, inputs, trained
    )


def _outcome(style_id: int, result: TrainingResult | None = None) -> JobOutcome:
    meta: dict[str, object] = {"style_id": style_id}
    if result is not None:
        meta.update(
            steps=result.steps,
            resumed_from_step=result.resumed_from_step,
            eval_loss_before=round(result.eval_loss_before, 6),
            eval_loss_after=round(result.eval_loss_after, 6),
            style_prompt=result.style_prompt,
            base_model=result.base_model,
            steps_per_second=round(result.steps_per_second, 3),
        )
    return JobOutcome(result_blobs=[], result_meta=meta)


def train(ctx: WorkerContext, job: JobSnapshot, reporter: ProgressReporter) -> JobOutcome:
    """Run one style training job: check the pictures, train (resuming), register the style."""
    prune_if_due(ctx)
    folder = checkpoint_dir(ctx, int(job.params["training_id"]))
    loaded = ctx.db.call(trainings.inputs, int(job.params["training_id"]), job.id, str(folder))
    if isinstance(loaded, int):
        logger.info("training job %s already produced style %s", job.id, loaded)
        shutil.rmtree(folder, ignore_errors=True)
        return _outcome(loaded)
    inputs = loaded
    limits = ctx.config.limits
    images = [ctx.blobs.get(key) for key in inputs.image_blobs]
    dataset = prepare_dataset(
        images,
        trigger_word=inputs.trigger_word,
        captions=inputs.captions or None,
        resolution=training_resolution(ctx.config.engine.profile),
        limits=DatasetLimits(
            min_images=limits.training_min_images,
            max_images=limits.training_max_images,
            max_bytes=limits.max_upload_bytes,
            max_pixels=limits.max_image_pixels,
        ),
    )
    device = ctx.engine.device
    config = _training_config(ctx, inputs, device)
    components = load_training_components(
        config.base_model,
        profile=ctx.config.engine.profile,
        models_dir=ctx.config.engine.models_dir,
        dtype=torch.float16 if config.mixed_precision == "fp16" else torch.float32,
    )
    logger.info(
        "training style %r (job %s) on %s: %d images, %d steps",
        inputs.name,
        job.id,
        config.base_model,
        len(dataset),
        config.total_steps(len(dataset)),
    )
    try:
        result = train_style_lora(
            config,
            dataset,
            components,
            checkpoint_dir=folder,
            output_dir=folder / "final",
            device=device,
            progress=_TrainingReporter(ctx, inputs.id, reporter),
            cancel=reporter.cancelled,
            # A warm shutdown (a deploy): checkpoint now and hand the job over.
            stop=STOPPING.is_set,
        )
    except TrainingInterrupted as stopped:
        owner = reporter.lease.owner if reporter.lease is not None else None
        handed = owner is not None and ctx.db.call(lifecycle.hand_back, job.id, owner)
        logger.warning(
            "training job %s stopped at step %d for the worker's shutdown; checkpoint kept, "
            "job %s",
            job.id,
            stopped.step,
            "handed back" if handed else "left to its lease",
        )
        raise WorkerStopping(str(stopped)) from None
    except Cancelled:
        if not reporter.lease_lost:
            # The user gave up on this training; a retry starts afresh. (A lost lease keeps the
            # checkpoints: the worker that took the job over resumes from them.)
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        del components
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not reporter.still_ours():
        # Taken over by another worker meanwhile: that one registers the style.
        raise Cancelled("the job's lease was lost")
    try:
        style_id = _register(ctx, job, inputs, result, images[0])
    except Cancelled:
        # Cancelled (or the user ran /forget) while the last steps ran: nothing was stored.
        shutil.rmtree(folder, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    return _outcome(style_id, result)


@shared_task(name="style.train", bind=True, acks_late=True)
def train_style(self: Task, job_id: int) -> str | None:
    """Train a style LoRA for a job (idempotent; resumes from a checkpoint on redelivery).

    On the worker's warm shutdown the training saves a checkpoint, gives the job back and its
    message goes back to the queue: the next training worker resumes from that step."""
    try:
        status: JobStatus | None = run_gpu_job(self, job_id, train)
    except WorkerStopping as stopped:
        raise Reject(str(stopped), requeue=True) from None
    if status in FINAL_STATUSES:
        # The pictures served their purpose: gone now rather than at the next hourly expiry
        # (which catches the trainings that ended elsewhere: a cancel, the sweep).
        ctx = get_context()
        ctx.db.call(privacy.drop_training_images, ctx.blobs)
    return status.value if status else None
