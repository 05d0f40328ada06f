"""Deleting blobs: only once no row points at them any more (content-addressed, so shared), and
only after the transaction that dropped the last reference has committed.

`release` decides inside the caller's transaction which keys are free, then queues their
deletion on the session; the bytes go when that transaction commits. A rollback (a later step
failed, the database went away) forgets the queue, so a row that survives never points at bytes
that were already deleted."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import event
from sqlalchemy.orm import Session

from core.blobstore import BlobStore
from core.settings import BrokerSettings
from db.repositories.blobs import BlobReferenceRepository
from db.session import Database

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


# ---- garbage collection ----

# Unreferenced blobs younger than this are left alone: a job may have stored its results and
# not recorded them yet (a training runs for hours). `collect_garbage` also waits at least twice
# the longest job time limit.
MIN_GRACE = timedelta(hours=24)
_BATCH = 200


def gc_grace(broker: BrokerSettings) -> timedelta:
    """How old an unreferenced blob must be to go: a day, or twice the longest job."""
    longest = max(broker.gpu_time_limit, broker.train_time_limit)
    return max(MIN_GRACE, timedelta(seconds=2 * longest))


@dataclass(frozen=True)
class Collection:
    """What one garbage collection found and did."""

    scanned: int  # blobs older than the grace period
    unreferenced: int  # of those, pointed at by no row
    deleted: int  # removed (0 on a dry run)


def _release_if_still_old(
    session: Session, blobs: BlobStore, keys: list[str], before: datetime
) -> int:
    # Written again since the scan (a `put` renews a blob's time): a row may be about to
    # point at it, so it stays.
    old = [k for k in keys if (at := blobs.stored_at(k)) is not None and at < before]
    return release(session, blobs, old)


def collect_garbage(
    db: Database,
    blobs: BlobStore,
    *,
    grace: timedelta = MIN_GRACE,
    now: datetime | None = None,
    dry_run: bool = False,
) -> Collection:
    """Delete the blobs no row points at that were last written more than `grace` ago.

    They are left behind when a process dies between storing a file and recording it (a hard
    time limit, a database out of reach past the worker's patience). Each candidate is checked
    again in the transaction that deletes it, so a row committed since the first read keeps
    its blob."""
    grace = max(grace, MIN_GRACE)
    before = (now or datetime.now(UTC)) - grace
    referenced = db.call(lambda s: BlobReferenceRepository(s).all_referenced())
    scanned = 0
    candidates: list[str] = []
    for key in blobs.scan(before):
        scanned += 1
        if key not in referenced:
            candidates.append(key)
    deleted = 0
    if not dry_run:
        for start in range(0, len(candidates), _BATCH):
            chunk = candidates[start : start + _BATCH]
            deleted += db.call(_release_if_still_old, blobs, chunk, before)
    logger.info(
        "blob garbage collection%s: %d blobs older than %s, %d unreferenced, %d deleted",
        " (dry run)" if dry_run else "",
        scanned,
        grace,
        len(candidates),
        deleted,
    )
    return Collection(scanned, len(candidates), deleted)
