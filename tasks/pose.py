"""The pose of a portrait job: a ready OpenPose map is used as is; a photo becomes one.

A photo is turned into a body + hands skeleton by the engine's OpenPose annotator before any
portrait is painted. The map is stored as a blob (`params["pose_map_blob"]`, so /forget and the
blob reference check see it) and a small preview is queued on io for the user ("pose found"),
so they know what the portraits will copy while the generation runs. A photo with nobody in it
fails the job (`pose_no_person`) and nothing is generated.
"""

from __future__ import annotations

import logging

from kombu.exceptions import KombuError
from PIL import Image

from domain import lifecycle
from facechain.posemap import is_skeleton_map
from tasks.context import WorkerContext
from tasks.dispatch import send_io
from tasks.inputs import encode_png, load_blob_image
from tasks.jobs import JobSnapshot

logger = logging.getLogger(__name__)

POSE_PREVIEW_TASK = "delivery.pose_preview"


def prepare_pose(ctx: WorkerContext, job: JobSnapshot) -> Image.Image | None:
    """The control map for a job's pose blob; None when the job has no pose.

    Raises:
        NoPersonInPose: the photo shows nobody (the job fails before generating).
        PoseAnnotatorMissing: a photo was sent but the annotator's weights are missing.
    """
    params = job.params
    source = params.get("pose_blob")
    if not source:
        return None
    done = params.get("pose_map_blob")
    if done:
        # An earlier attempt of this job already extracted it (and queued the preview).
        return load_blob_image(ctx.blobs, done)
    image = load_blob_image(ctx.blobs, source)
    if is_skeleton_map(image):
        logger.info("job %s: the pose is a ready skeleton map", job.id)
        return image
    extraction = ctx.engine.extract_pose(image)
    key = ctx.blobs.put(encode_png(extraction.map))
    ctx.db.call(lifecycle.record_pose_map, job.id, key)
    logger.info("job %s: pose map from a photo (%d people)", job.id, extraction.people)
    try:
        send_io(ctx.celery, POSE_PREVIEW_TASK, job.id)
    except (KombuError, OSError) as exc:
        # Only the preview is lost; the portraits still follow.
        logger.warning("job %s: pose preview not queued (%s)", job.id, exc)
    return extraction.map
