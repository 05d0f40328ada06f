"""Shared fixtures: a real PostgreSQL database per xdist worker (SQLite when none is reachable),
migrated to head; each test runs inside a transaction that is rolled back."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests run two xdist workers (plus worker processes) on two cores: one torch thread each
# avoids oversubscription that makes tiny models 10-40x slower. Children inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from core.blobstore import LocalBlobStore
from db.session import Database, create_db_engine

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def postgres_available() -> bool:
    """Whether the test PostgreSQL server answers (CI and dev machines have one)."""
    if os.environ.get("TEST_DATABASE") == "sqlite":
        return False
    try:
        engine = create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 2})
        with engine.connect():
            pass
        engine.dispose()
    except Exception:
        return False
    return True


def migrate(url: str) -> None:
    """Run Alembic to head on this URL."""
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["url"] = url
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")


def fresh_postgres_database(name: str) -> str:
    """Drop and recreate a database on the test server; return its URL."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return str(make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(False))


@pytest.fixture(scope="session")
def worker_id_suffix(request: pytest.FixtureRequest) -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def drop_postgres_database(name: str) -> None:
    """Drop a test database (at the end of the session)."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def database_url(worker_id_suffix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database for this test process: PostgreSQL if reachable, else SQLite."""
    if postgres_available():
        # The pid keeps concurrent test runs on one server apart.
        name = f"facechain_test_{worker_id_suffix}_{os.getpid()}"
        url = fresh_postgres_database(name)
        migrate(url)
        yield url
        drop_postgres_database(name)
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
        migrate(url)
        yield url


@pytest.fixture(scope="session")
def db_engine(database_url: str) -> Iterator[Engine]:
    engine = create_db_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db(db_engine: Engine) -> Iterator[Database]:
    """A Database whose sessions all join one outer transaction, rolled back after the test."""
    conn = db_engine.connect()
    outer = conn.begin()
    database = Database(db_engine)
    database.sessionmaker = sessionmaker(
        bind=conn, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )
    try:
        yield database
    finally:
        if database._executor is not None:
            database._executor.shutdown(wait=True)
        outer.rollback()
        conn.close()


@pytest.fixture
def session(db: Database) -> Iterator[Session]:
    """A session inside the test transaction (flush freely; commits are savepoints)."""
    with db.sessionmaker() as s:
        yield s


def truncate_all(engine: Engine) -> None:
    """Empty every table (for tests whose other processes need committed data)."""
    from db.base import Base

    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture
def committed_db(db_engine: Engine) -> Iterator[Database]:
    """A Database that really commits (other processes see rows); tables emptied afterwards."""
    database = Database(db_engine)
    try:
        yield database
    finally:
        if database._executor is not None:
            database._executor.shutdown(wait=True)
        truncate_all(db_engine)


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")
