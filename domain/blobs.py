"""Deleting blobs: only once no row points at them any more (content-addressed, so shared)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session

from core.blobstore import BlobStore
from db.repositories.blobs import BlobReferenceRepository


def release(session: Session, blobs: BlobStore, keys: Iterable[str]) -> int:
    """Delete the blobs among `keys` that nothing references after this transaction's changes
    (flushed first); returns how many were deleted."""
    session.flush()
    free = BlobReferenceRepository(session).unreferenced(keys)
    for key in free:
        blobs.delete(key)
    return len(free)
