"""Turn a job's stored inputs (photo rows, blobs) into what the engine takes."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from sqlalchemy import select

from db.models import Photo
from facechain.engine import id_crop
from facechain.faces import Face
from facechain.imageio import load_image, to_rgb_array
from service.blobstore import BlobStore
from service.errors import NotFound
from tasks.context import WorkerContext


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
    with ctx.db.session() as session:
        rows = session.scalars(select(Photo).where(Photo.id.in_(list(photo_ids)))).all()
        photos = {p.id: (p.sha256, list(p.faces), p.selected_face, p.user_id) for p in rows}
    selfies = []
    for pid in photo_ids:
        if pid not in photos or (user_id is not None and photos[pid][3] != user_id):
            raise NotFound(f"photo {pid} is gone", photo_id=pid)
        sha, faces, selected, _ = photos[pid]
        image = to_rgb_array(load_image(ctx.blobs.get(sha)))
        face = Face.from_record(faces[selected or 0])
        selfies.append(Selfie(image=image, face=face, aligned=id_crop(image, face)))
    return selfies


def load_blob_image(blobs: BlobStore, key: str) -> Image.Image:
    """A stored image, decoded safely."""
    return load_image(blobs.get(key))


def encode_png(image: Image.Image) -> bytes:
    """Lossless bytes for the blob store."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
