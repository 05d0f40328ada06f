"""Migrations go up and down on SQLite and PostgreSQL, and match the models."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from db.base import Base
from service.migrate import alembic_config, downgrade, upgrade


class TestMigrations:
    def test_up_down_up_matches_models(self, urls: list[str]) -> None:
        for url in urls:
            upgrade(url)
            engine = create_engine(url)
            tables = set(inspect(engine).get_table_names())
            assert set(Base.metadata.tables) <= tables
            with engine.connect() as conn:
                diff = compare_metadata(
                    MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
                )
            assert diff == [], f"models and migrations differ on {url}: {diff}"
            downgrade(url, "base")
            assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
            upgrade(url)
            assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
            engine.dispose()

    def test_single_head(self) -> None:
        from alembic.script import ScriptDirectory

        script = ScriptDirectory.from_config(alembic_config("sqlite://"))
        assert len(script.get_heads()) == 1

    @pytest.mark.parametrize("sql", [True])
    def test_offline_sql_renders(self, sql: bool, capsys: pytest.CaptureFixture[str]) -> None:
        cfg = alembic_config("postgresql+psycopg://u@h/db")
        command.upgrade(cfg, "head", sql=sql)
        assert "CREATE TABLE jobs" in capsys.readouterr().out
