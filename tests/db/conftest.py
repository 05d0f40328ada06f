"""Databases for the migration tests: a fresh SQLite file and, when the server answers, a fresh
PostgreSQL database (named per test module and process, so parallel runs never share one)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from tests.conftest import drop_postgres_database, fresh_postgres_database, postgres_available


@pytest.fixture
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    """Database URLs to run a migration test on, each empty."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    found = [f"sqlite:///{tmp_path / 'm.db'}"]
    name = f"facechain_{module}_{os.getpid()}"
    if postgres_available():
        found.append(fresh_postgres_database(name))
    yield found
    if len(found) > 1:
        drop_postgres_database(name)


def insert_user(conn: Connection) -> None:
    """User 1 (Telegram id 5), in the columns every revision since the first one has."""
    conn.execute(
        text(
            "INSERT INTO users (id, telegram_id, language, language_chosen, is_banned,"
            " ban_notified, can_train, created_at, updated_at) VALUES (1, 5, 'en',"
            " false, false, false, false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
        )
    )
