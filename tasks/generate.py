"""gpu task `portrait.generate`: a selfie (or several) and a style in, ranked portraits out."""

from __future__ import annotations

import logging

from celery import Task, shared_task

from db.models import JobStatus, Style
from facechain.engine import PortraitRequest, StyleSpec
from facechain.similarity import IdentityScorer
from service.errors import NotFound
from tasks.context import WorkerContext
from tasks.inputs import encode_png, load_blob_image, load_selfies
from tasks.jobs import JobOutcome, JobSnapshot, ProgressReporter, run_gpu_job

logger = logging.getLogger(__name__)


def style_spec(ctx: WorkerContext, style_id: int | None) -> StyleSpec:
    """The engine's view of a style row, with its LoRA file resolved locally."""
    from service.styles import resolve_style_lora

    with ctx.db.session() as session:
        style = session.get(Style, style_id) if style_id is not None else None
        if style is None:
            raise NotFound(f"style {style_id} is gone", style_id=style_id)
        lora_path = resolve_style_lora(style, ctx.config.engine.models_dir, ctx.blobs)
        return StyleSpec(
            name=style.slug,
            base_model=style.base_model.value,
            prompt=style.prompt,
            template=style.prompt_template,
            lora_path=lora_path,
            lora_weight=style.lora_weight,
        )


def generate(ctx: WorkerContext, job: JobSnapshot, reporter: ProgressReporter) -> JobOutcome:
    """Run the engine for one portrait job and store the images."""
    params = job.params
    selfies = load_selfies(ctx, job.user_id, params["photo_ids"])
    style = style_spec(ctx, job.style_id or params.get("style_id"))
    pose = load_blob_image(ctx.blobs, params["pose_blob"]) if params.get("pose_blob") else None
    num_images = int(params.get("num_images") or ctx.config.engine.num_images)
    scorer = IdentityScorer.from_images([s.image for s in selfies])

    portraits = ctx.engine.portraits(
        PortraitRequest(
            selfies=[s.aligned for s in selfies],
            style=style,
            pose=pose,
            num_images=num_images,
            num_candidates=max(num_images, ctx.config.engine.num_candidates),
            seed=params.get("seed"),
            scorer=scorer,
            min_similarity=ctx.config.engine.similarity_floor,
        ),
        progress=reporter,
        cancel=reporter.cancelled,
    )
    blobs = [ctx.blobs.put(encode_png(p.image)) for p in portraits]
    meta = {
        "similarity": [
            None if p.similarity is None else round(float(p.similarity), 4) for p in portraits
        ],
        "seeds": [int(p.seed) for p in portraits],
        "style": style.name,
    }
    return JobOutcome(result_blobs=blobs, result_meta=meta)


@shared_task(name="portrait.generate", bind=True, acks_late=True)
def generate_portrait(self: Task, job_id: int) -> str | None:
    """Generate a portrait set for a job (idempotent: finished jobs are left alone)."""
    status: JobStatus | None = run_gpu_job(self, job_id, generate)
    return status.value if status else None
