"""Engine and session factory; `Database.run` runs sync repository work off the event loop.

One repository codebase serves both sides: Celery tasks use sessions directly, the async bot and
admin web call `await db.run(fn, ...)`, which runs `fn(session, ...)` in a worker thread inside
one transaction. SQLite gets WAL and a busy timeout so the bot and workers can share a file."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


def create_db_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> Engine:
    """A SQLAlchemy engine with the right options for SQLite or PostgreSQL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(
        url, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
    )


class Database:
    """Owns the engine, the session factory and the thread pool for async callers."""

    def __init__(self, engine: Engine, *, threads: int = 8) -> None:
        self.engine = engine
        self.sessionmaker = sessionmaker(engine, expire_on_commit=False)
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Database:
        return cls(create_db_engine(url, **kwargs))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: commit on success, roll back on error."""
        with self.sessionmaker() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def call(self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kw: P.kwargs) -> T:
        """Run `fn(session, ...)` in one transaction, synchronously."""
        with self.session() as session:
            return fn(session, *args, **kw)

    async def run(
        self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kw: P.kwargs
    ) -> T:
        """Run `fn(session, ...)` in one transaction on the thread pool (never blocks the loop)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="db")
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()

        def job() -> T:
            return self.call(fn, *args, **kw)

        return await loop.run_in_executor(self._executor, ctx.run, job)

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self.engine.dispose()
