"""gpu task `template.inpaint`: the user's face put into a template photo (one or more faces)."""

from __future__ import annotations

import logging

from celery import Task, shared_task

from db.models import JobStatus
from domain import inputs
from facechain.errors import SafetyFlagged
from tasks.context import WorkerContext
from tasks.housekeeping import prune_if_due
from tasks.inputs import decide_subject, encode_png, load_blob_image, load_selfies
from tasks.jobs import JobCancelled, JobOutcome, JobSnapshot, ProgressReporter, run_gpu_job
from tasks.safety import record_flags

logger = logging.getLogger(__name__)


def template_blob(ctx: WorkerContext, job: JobSnapshot) -> str:
    """Blob key of the template image: a catalog template or the user's own photo."""
    params = job.params
    return ctx.db.call(
        inputs.template_blob,
        job.user_id,
        job.template_id or params.get("template_id"),
        params.get("template_photo_id"),
    )


def inpaint(ctx: WorkerContext, job: JobSnapshot, reporter: ProgressReporter) -> JobOutcome:
    """Replace the chosen template faces with the user's identity."""
    from facechain.inpaint import InpaintRequest

    prune_if_due(ctx)
    params = job.params
    template = load_blob_image(ctx.blobs, template_blob(ctx, job))
    selfies = load_selfies(ctx, job.user_id, params["photo_ids"])
    faces = [int(f) for f in params.get("faces") or [1]]
    override = params.get("subject")
    # One selfie per chosen face puts a different person into each; otherwise every chosen
    # face gets the same identity (all the user's selfies averaged).
    if len(selfies) == len(faces) and len({s.aligned.tobytes() for s in selfies}) > 1:
        # A subject per person (the user's choice, when set, still applies to every face).
        decisions = [decide_subject(ctx.engine, override, [s]) for s in selfies]
        request = InpaintRequest(
            template=template,
            identities=[[s.aligned] for s in selfies],
            faces=faces,
            seed=params.get("seed"),
            subjects=[d.prompt for d in decisions],
        )
        subject_meta = [d.meta() for d in decisions]
    else:
        decision = decide_subject(ctx.engine, override, selfies)
        request = InpaintRequest(
            template=template,
            selfies=[s.aligned for s in selfies],
            faces=faces,
            seed=params.get("seed"),
            prompt_prefix=decision.prefix,
            negative_suffix=decision.negative_suffix,
        )
        subject_meta = [decision.meta()] * len(faces)
    try:
        result = ctx.engine.inpaint(request, progress=reporter, cancel=reporter.cancelled)
    except SafetyFlagged as exc:
        record_flags(ctx, job, "template", exc.verdicts)
        raise
    if ctx.engine.checking:
        record_flags(ctx, job, "template", [], checked=1)
    if reporter.cancelled_now():
        # Cancelled (or the user ran /forget) while the last step ran: store nothing.
        raise JobCancelled
    key = ctx.blobs.put(encode_png(result))
    return JobOutcome(
        result_blobs=[key],
        result_meta={
            "faces": faces,
            "size": [result.width, result.height],
            # One decision per chosen face, in the order of `faces`.
            "subject": subject_meta,
        },
    )


@shared_task(name="template.inpaint", bind=True, acks_late=True)
def inpaint_template(self: Task, job_id: int) -> str | None:
    """Run a template job (idempotent: finished jobs are left alone)."""
    status: JobStatus | None = run_gpu_job(self, job_id, inpaint)
    return status.value if status else None
