"""Deleting blobs: only once no row points at them any more (content-addressed, so shared), and
only after the transaction that dropped the last reference has committed.

`release` decides inside the caller's transaction which keys are free, then queues their
deletion on the session; the bytes go when that transaction commits. A rollback (a later step
failed, the database went away) forgets the queue, so a row that survives never points at bytes
that were already deleted."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import event
from sqlalchemy.orm import Session

from core.blobstore import BlobStore
from db.repositories.blobs import BlobReferenceRepository

logger = logging.getLogger(__name__)

# Where the keys wait in `Session.info` until the commit: (blob store, key) pairs.
_KEY = "facechain_blob_deletes"


def release(session: Session, blobs: BlobStore, keys: Iterable[str]) -> int:
    """Queue for deletion after the commit the blobs among `keys` that nothing references after
    this transaction's changes (flushed first); returns how many will be deleted."""
    session.flush()
    free = BlobReferenceRepository(session).unreferenced(keys)
    if not free:
        return 0
    if not event.contains(session, "after_commit", _delete_queued):
        # Once per session (listeners cannot be removed while they run; idle ones cost nothing).
        event.listen(session, "after_commit", _delete_queued)
        event.listen(session, "after_soft_rollback", _forget_queued)
    queued: list[tuple[BlobStore, str]] = session.info.setdefault(_KEY, [])
    queued.extend((blobs, key) for key in free)
    return len(free)


def _take(session: Session) -> list[tuple[BlobStore, str]]:
    queued: list[tuple[BlobStore, str]] = session.info.pop(_KEY, None) or []
    return queued


def _delete_queued(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint committed; the bytes wait for the real commit
    for blobs, key in _take(session):
        try:
            blobs.delete(key)
        except Exception:  # the rows are gone already; an orphan blob is only wasted space
            logger.exception("blob %s could not be deleted after the commit", key)


def _forget_queued(session: Session, _transaction: object) -> None:
    # Any rollback, a savepoint's too, drops every queued deletion: at worst an orphan blob
    # stays (wasted space), never a row pointing at deleted bytes.
    dropped = _take(session)
    if dropped:
        logger.info("rolled back: %d blob deletions dropped", len(dropped))
