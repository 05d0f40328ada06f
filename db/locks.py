"""Named locks across processes and machines that share the database, taken without waiting.

A periodic task that must not run twice at once (two beats, a beat and a slow worker) takes one:
`with try_lock(db, "payments.reconcile") as held:` runs its body with `held` False when another
holder has it. PostgreSQL: a session advisory lock on a connection of its own, so a holder that
dies (SIGKILL, a lost machine) frees it with its connection. SQLite (the embedded mode, one
machine by nature): an exclusive `flock` on a file beside the database file, freed by the
kernel when its holder exits; an in-memory database (one process) gets a process lock."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import func, select

from db.session import Database

logger = logging.getLogger(__name__)

_memory_locks: dict[str, threading.Lock] = {}
_memory_guard = threading.Lock()


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for `pg_try_advisory_lock` (the same in every process)."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_path(database: str, name: str) -> Path:
    """The lock file of `name` beside a SQLite database file."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return Path(f"{database}.{safe}.lock")


@contextmanager
def try_lock(db: Database, name: str) -> Iterator[bool]:
    """Hold the lock `name` for the body if nobody else does; yields whether it is held."""
    url = db.engine.url
    if url.get_backend_name() == "postgresql":
        with _postgres_lock(db, name) as held:
            yield held
    elif url.database and url.database != ":memory:":
        with _file_lock(lock_path(url.database, name)) as held:
            yield held
    else:
        with _memory_lock(name) as held:
            yield held


@contextmanager
def _postgres_lock(db: Database, name: str) -> Iterator[bool]:
    key = lock_key(name)
    conn = db.engine.connect()
    try:
        held = bool(conn.scalar(select(func.pg_try_advisory_lock(key))))
        # The session lock outlives the transaction: the connection idles outside one.
        conn.commit()
        try:
            yield held
        finally:
            if held:
                try:
                    conn.scalar(select(func.pg_advisory_unlock(key)))
                    conn.commit()
                except Exception:
                    # A connection that may still hold the lock never goes back to the pool.
                    logger.exception("advisory lock %s not released; connection dropped", name)
                    conn.invalidate()
    finally:
        conn.close()


@contextmanager
def _file_lock(path: Path) -> Iterator[bool]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        # flock locks belong to the open file: a second open conflicts, threads included.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held = True
    except BlockingIOError:
        held = False
    try:
        yield held
    finally:
        if held:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def _memory_lock(name: str) -> Iterator[bool]:
    with _memory_guard:
        lock = _memory_locks.setdefault(name, threading.Lock())
    held = lock.acquire(blocking=False)
    try:
        yield held
    finally:
        if held:
            lock.release()
