"""gpu task `portrait.generate`: a selfie (or several) and a style in, ranked portraits out."""

from __future__ import annotations

import logging

from celery import Task, shared_task

from db.models import JobStatus
from domain import inputs
from domain.loras import resolve_style_lora
from facechain.engine import PortraitRequest, StyleSpec
from facechain.errors import SafetyFlagged
from facechain.similarity import IdentityScorer
from tasks.context import WorkerContext
from tasks.housekeeping import prune_if_due
from tasks.inputs import decide_subject, encode_png, load_selfies
from tasks.jobs import JobCancelled, JobOutcome, JobSnapshot, ProgressReporter, run_gpu_job
from tasks.pose import prepare_pose
from tasks.safety import record_flags

logger = logging.getLogger(__name__)


def style_spec(ctx: WorkerContext, style_id: int | None) -> StyleSpec:
    """The engine's view of a style row, with its LoRA file resolved locally."""
    style = ctx.db.call(inputs.style, style_id)
    # Resolved outside the transaction: a first use may download the LoRA.
    lora_path = resolve_style_lora(
        style, ctx.config.engine.models_dir, ctx.blobs, profile=ctx.config.engine.profile
    )
    return StyleSpec(
        name=style.slug,
        base_model=style.base_model.value,
        prompt=style.prompt,
        template="cloth" if style.prompt_template == "cloth" else "style",
        lora_path=lora_path,
        lora_weight=style.lora_weight,
    )


def generate(ctx: WorkerContext, job: JobSnapshot, reporter: ProgressReporter) -> JobOutcome:
    """Run the engine for one portrait job and store the images."""
    prune_if_due(ctx)
    params = job.params
    selfies = load_selfies(ctx, job.user_id, params["photo_ids"])
    style = style_spec(ctx, job.style_id or params.get("style_id"))
    # A pose photo becomes a skeleton map (and a preview) before anything is painted.
    pose = prepare_pose(ctx, job)
    num_images = int(params.get("num_images") or ctx.config.engine.num_images)
    scorer = IdentityScorer.from_images([s.image for s in selfies])
    subject = decide_subject(ctx.engine, params.get("subject"), selfies)

    request = PortraitRequest(
        selfies=[s.aligned for s in selfies],
        style=style,
        pose=pose,
        num_images=num_images,
        num_candidates=max(num_images, ctx.config.engine.num_candidates),
        seed=params.get("seed"),
        scorer=scorer,
        min_similarity=ctx.config.engine.similarity_floor,
        prompt_prefix=subject.prefix,
        negative_suffix=subject.negative_suffix,
    )
    try:
        portraits = ctx.engine.portraits(request, progress=reporter, cancel=reporter.cancelled)
    except SafetyFlagged as exc:
        # Nothing safe: the job fails (safety_flagged, not the user's fault: charge back).
        record_flags(ctx, job, "portrait", exc.verdicts)
        raise
    record_flags(ctx, job, "portrait", portraits.flagged, checked=portraits.checked)
    if reporter.cancelled_now():
        # Cancelled (or the user ran /forget) while the last step ran: store nothing.
        raise JobCancelled
    blobs = [ctx.blobs.put(encode_png(p.image)) for p in portraits]
    meta = {
        "similarity": [
            None if p.similarity is None else round(float(p.similarity), 4) for p in portraits
        ],
        "seeds": [int(p.seed) for p in portraits],
        # Some portraits are under the likeness floor: the album says so, with a tip.
        "low_likeness": any(p.low_likeness for p in portraits),
        # Portraits the safety checker held back (the album says so in one sentence).
        "held_back": portraits.held_back,
        "style": style.name,
        "subject": subject.meta(),
    }
    return JobOutcome(result_blobs=blobs, result_meta=meta)


@shared_task(name="portrait.generate", bind=True, acks_late=True)
def generate_portrait(self: Task, job_id: int) -> str | None:
    """Generate a portrait set for a job (idempotent: finished jobs are left alone)."""
    status: JobStatus | None = run_gpu_job(self, job_id, generate)
    return status.value if status else None
