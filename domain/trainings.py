"""Style trainings on the worker's side: their inputs, their progress, and the new style.

The style is registered in its own transaction before the job is marked succeeded, and a
redelivery that finds it registered only finishes the job (`inputs` returns the style id)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from core.blobstore import BlobStore
from db.models import Job, StyleTraining
from db.repositories.styles import StyleTrainingRepository
from domain.styles import add_trained_style
from domain.webhooks import emit_event
from facechain.errors import Cancelled

MAX_NAME = 64
TRIGGER = re.compile(r"^[a-z0-9_]{2,32}$")


def valid_name(name: str) -> bool:
    """A style's name: 1 to MAX_NAME characters."""
    return 1 <= len(name) <= MAX_NAME


def valid_trigger(word: str) -> bool:
    """A trigger word: 2-32 lower-case letters, digits or underscores."""
    return TRIGGER.match(word) is not None


@dataclass(frozen=True)
class TrainingInputs:
    """A StyleTraining row's inputs, read in one short transaction."""

    id: int
    user_id: int | None
    name: str
    trigger_word: str
    base_model: str
    image_blobs: list[str]
    captions: list[str]
    config: dict[str, object]


def inputs(
    session: Session, training_id: int, job_id: int, checkpoint_path: str
) -> TrainingInputs | int:
    """The training's inputs, or the id of the style it already produced (redelivery)."""
    row = StyleTrainingRepository(session).get(training_id)
    if row.style_id is not None:
        return row.style_id
    row.job_id = row.job_id or job_id
    row.checkpoint_path = checkpoint_path
    return TrainingInputs(
        id=row.id,
        user_id=row.user_id,
        name=row.name,
        trigger_word=row.trigger_word,
        base_model=row.base_model,
        image_blobs=list(row.image_blobs),
        captions=list(row.captions or []),
        config=dict(row.config or {}),
    )


def record_step(session: Session, training_id: int, step: int, loss: float) -> None:
    """How far the optimizer got (shown to admins; the job's progress bar is separate).

    Nothing to record when the row is gone (/forget while it trains: the job's cancel flag
    stops the training at its next check)."""
    row = session.get(StyleTraining, training_id)
    if row is None:
        return
    row.step = step
    row.last_loss = loss


@dataclass(frozen=True)
class TrainedLoRA:
    """What a finished training produced, as the style registration needs it."""

    lora: bytes
    kohya: bytes
    thumbnail: bytes
    style_prompt: str
    base_model: str
    trigger_word: str
    steps: int
    rank: int
    losses: list[float]
    eval_loss_before: float
    eval_loss_after: float


def register_style(
    session: Session,
    blobs: BlobStore,
    job_id: int,
    inputs: TrainingInputs,
    result: TrainedLoRA,
) -> int:
    """Store the LoRA, add the user's new style and emit `style.trained`; the style's id.

    The job's row is locked first and its cancel flag read fresh: a training the user cancelled
    or /forget stopped while it ran stores nothing (`Cancelled`; the worker removes its
    checkpoints). /forget takes the same lock, so it either comes first and is seen here, or
    comes after and finds the registered style to delete."""
    job = session.get(Job, job_id, with_for_update=True, populate_existing=True)
    if job is None or job.cancel_requested:
        raise Cancelled(f"training job {job_id} was cancelled before its style was stored")
    row = StyleTrainingRepository(session).get_for_update(inputs.id)
    if row.style_id is not None:
        return row.style_id
    style = add_trained_style(
        session,
        blobs,
        lora_bytes=result.lora,
        kohya_bytes=result.kohya,
        thumbnail_bytes=result.thumbnail,
        name=inputs.name,
        prompt=result.style_prompt,
        base_model=result.base_model,
        owner_id=inputs.user_id,
        training_id=inputs.id,
        trigger_word=result.trigger_word,
    )
    extra: dict[str, Any] = {
        **style.extra,
        "steps": result.steps,
        "rank": result.rank,
        "eval_loss_before": round(result.eval_loss_before, 6),
        "eval_loss_after": round(result.eval_loss_after, 6),
    }
    style.extra = extra
    row.style_id = style.id
    row.style_prompt = result.style_prompt
    row.step = result.steps
    row.last_loss = result.losses[-1] if result.losses else None
    job.style_id = style.id
    emit_event(
        session,
        "style.trained",
        {"style_id": style.id, "training_id": inputs.id, "job_id": job_id},
    )
    return style.id


def name_taken(session: Session, user_id: int, name: str) -> bool:
    """Whether the user already has a training (so a style) by this name."""
    return StyleTrainingRepository(session).name_taken(user_id, name)
