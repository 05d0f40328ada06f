"""Declarative base with a naming convention and timezone-aware timestamps."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, Enum, MetaData, TypeDecorator, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Now, timezone-aware UTC."""
    return datetime.now(UTC)


# The database's own clock: leases are compared with it, never with a worker's clock (two
# machines' clocks drift; the database is the one place every worker agrees on).
_CLOCK_SQL = {
    "postgresql": "SELECT clock_timestamp()",
    "sqlite": "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')",
}


def db_now(session: Session) -> datetime:
    """Now by the database's clock, timezone-aware UTC (PostgreSQL or SQLite)."""
    dialect = session.get_bind().dialect.name
    value = session.execute(text(_CLOCK_SQL[dialect])).scalar_one()
    if isinstance(value, str):
        # SQLite's clock: UTC text with milliseconds.
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def lock_for_write(session: Session) -> None:
    """Where the database has no row locks, take its write lock now, before this transaction
    reads what it will write: SQLite's driver opens a transaction only at the first write, so
    rows read before it (a `FOR UPDATE` that SQLite ignores) may be stale by then and a state
    another process committed meanwhile would be overwritten. `BEGIN IMMEDIATE` waits (busy
    timeout) for a writer in progress and keeps others out until the commit. PostgreSQL's
    `FOR UPDATE` row locks need nothing."""
    if session.get_bind().dialect.name != "sqlite":
        return
    dbapi = session.connection().connection.dbapi_connection
    if not getattr(dbapi, "in_transaction", True):
        session.execute(text("BEGIN IMMEDIATE"))


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored in UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def str_enum(cls: type[enum.Enum], length: int = 16) -> Enum:
    """A Python enum stored as its values in a short VARCHAR (portable, no native ENUM type)."""
    return Enum(
        cls, native_enum=False, length=length, values_callable=lambda e: [m.value for m in e]
    )


# JSONB on PostgreSQL (indexable, compact), plain JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSONType,
    }


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, nullable=False
    )
