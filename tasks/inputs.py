"""Turn a job's stored inputs (photo rows, blobs) into what the engine takes."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

from core.blobstore import BlobStore
from domain import inputs
from facechain.engine import Engine, id_crop
from facechain.faces import Face, align_face
from facechain.imageio import load_image, to_rgb_array
from facechain.prompts import SubjectPrompt, is_subject, subject_prompt
from tasks.context import WorkerContext

logger = logging.getLogger(__name__)


@dataclass
class Selfie:
    """A decoded selfie, the chosen face and its 112x112 identity crop (head only, aligned)."""

    image: np.ndarray
    face: Face
    aligned: np.ndarray


def load_selfies(
    ctx: WorkerContext, user_id: int | None, photo_ids: Sequence[int]
) -> list[Selfie]:
    """Decode the user's selfies and align the chosen face of each."""
    selfies = []
    for record in ctx.db.call(inputs.selfies, user_id, photo_ids):
        image = to_rgb_array(load_image(ctx.blobs.get(record.sha256)))
        face = Face.from_record(record.face)
        selfies.append(Selfie(image=image, face=face, aligned=id_crop(image, face)))
    return selfies


@dataclass(frozen=True)
class SubjectDecision:
    """Who the picture shows and who decided: the user, FairFace (auto), or nobody."""

    prompt: SubjectPrompt | None
    source: Literal["user", "auto", "none"]

    @property
    def prefix(self) -> str:
        """Words before the prompt ("" without a subject)."""
        return self.prompt.prefix if self.prompt is not None else ""

    @property
    def negative_suffix(self) -> str:
        """Words after the negative prompt ("" without a subject)."""
        return self.prompt.negative_suffix if self.prompt is not None else ""

    def meta(self) -> dict[str, Any]:
        """The decision as recorded in `result_meta["subject"]`."""
        return {
            "value": self.prompt.subject if self.prompt is not None else None,
            "source": self.source,
            "prefix": self.prefix,
        }


def decide_subject(engine: Engine, override: Any, selfies: Sequence[Selfie]) -> SubjectDecision:
    """The user's choice (`users.subject`, copied into the job) wins; else FairFace decides
    once for all the selfies (probabilities averaged); without FairFace there is no subject."""
    if is_subject(override):
        return SubjectDecision(subject_prompt(override), "user")
    if override is not None:
        logger.warning("ignoring unknown subject %r", override)
    # FairFace sees the whole aligned face, as ModelScope's pipeline does (not the ID crop).
    crops = [align_face(s.image, s.face.landmarks) for s in selfies]
    prompt = engine.subject_for(crops)
    return SubjectDecision(prompt, "auto" if prompt is not None else "none")


def load_blob_image(blobs: BlobStore, key: str) -> Image.Image:
    """A stored image, decoded safely."""
    return load_image(blobs.get(key))


def encode_png(image: Image.Image) -> bytes:
    """Lossless bytes for the blob store."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
