"""gpu task `portrait.upscale`: one portrait of a finished job, ×4 with RRDB (the "HD" button).

Params: `{"source_job_id": int, "index": int (0-based), "size": int | null}` (`size` caps the
long side; FaceChain's 2048 for 512 px portraits). The result is one PNG blob, delivered as a
document so Telegram does not recompress it."""

from __future__ import annotations

import logging

from celery import Task, shared_task

from db.models import JobStatus
from domain import inputs
from facechain.errors import SafetyFlagged
from tasks.context import WorkerContext
from tasks.inputs import encode_png, load_blob_image
from tasks.jobs import JobOutcome, JobSnapshot, ProgressReporter, run_gpu_job
from tasks.safety import record_flags

logger = logging.getLogger(__name__)

# Input tile side: bounded memory on any GPU (and on CPU workers) with a few tiles per portrait.
TILE = 256


def source_blob(ctx: WorkerContext, job: JobSnapshot) -> str:
    """Blob key of the portrait to upscale (the user's own finished portrait job)."""
    params = job.params
    return ctx.db.call(
        inputs.upscale_source, job.user_id, int(params["source_job_id"]), int(params["index"])
    )


def upscale(ctx: WorkerContext, job: JobSnapshot, reporter: ProgressReporter) -> JobOutcome:
    """Super-resolve one portrait (progress per tile, cancellable between tiles)."""
    image = load_blob_image(ctx.blobs, source_blob(ctx, job))
    size = job.params.get("size")
    result = ctx.upscaler.upscale(
        image,
        tile=TILE,
        out_size=int(size) if size else None,
        progress=reporter,
        cancel=reporter.cancelled,
    )
    if ctx.config.safety.outputs == "block":
        # The checker is the engine's (resident in a warm gpu worker); ×4 detail can change a
        # verdict. An engine that cannot be built fails the job (weights_missing: charge back).
        [verdict] = ctx.engine.check_images([result])
        flagged = [verdict] if verdict.flagged else []
        record_flags(ctx, job, "upscale", flagged, checked=1 if ctx.engine.checking else 0)
        if flagged:
            raise SafetyFlagged("the HD result was flagged by the safety checker", flagged)
    key = ctx.blobs.put(encode_png(result))
    logger.info(
        "job %s: %dx%d -> %dx%d", job.id, image.width, image.height, result.width, result.height
    )
    source_job_id, index = int(job.params["source_job_id"]), int(job.params["index"])
    return JobOutcome(
        result_blobs=[key],
        result_meta={
            "source_job_id": source_job_id,
            "index": index,
            "size": [result.width, result.height],
            # The document's name in the chat (delivery and /history use the same one).
            "filename": hd_filename(source_job_id, index, result.width, result.height),
        },
    )


def hd_filename(source_job_id: int, index: int, width: int, height: int) -> str:
    """`portrait-<job>-<n>-<long side>.png`, n 1-based as on the HD buttons."""
    return f"portrait-{source_job_id}-{index + 1}-{max(width, height)}.png"


def _build_upscaler(ctx: WorkerContext) -> object:
    return ctx.upscaler


@shared_task(name="portrait.upscale", bind=True, acks_late=True)
def upscale_portrait(self: Task, job_id: int) -> str | None:
    """Upscale one portrait for a job (idempotent: finished jobs are left alone)."""
    status: JobStatus | None = run_gpu_job(
        self, job_id, upscale, prepare=_build_upscaler, needs_engine=False
    )
    return status.value if status else None
