"""Generic repository: queries live here, commits never do (the caller owns the transaction)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from core.errors import NotFound
from db.base import Base

M = TypeVar("M", bound=Base)


class RepositoryBase(Generic[M]):
    """CRUD helpers shared by every entity repository."""

    model: type[M]

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, id_: Any) -> M:
        """The row with this primary key; NotFound otherwise."""
        obj = self.session.get(self.model, id_)
        if obj is None:
            raise NotFound(f"{self.model.__name__} {id_} not found", id=id_)
        return obj

    def get_for_update(self, id_: Any) -> M:
        """The row, locked for the rest of the transaction where the database supports it."""
        obj = self.session.get(self.model, id_, with_for_update=True, populate_existing=True)
        if obj is None:
            raise NotFound(f"{self.model.__name__} {id_} not found", id=id_)
        return obj

    def add(self, obj: M, *, flush: bool = True) -> M:
        self.session.add(obj)
        if flush:
            self.session.flush()
        return obj

    def delete(self, obj: M) -> None:
        self.session.delete(obj)
        self.session.flush()

    def list(self, stmt: Select[M] | None = None) -> Sequence[M]:
        return self.session.scalars(stmt if stmt is not None else select(self.model)).all()

    def count(self, stmt: Select[Any] | None = None) -> int:
        base = stmt if stmt is not None else select(self.model)
        return int(self.session.scalar(select(func.count()).select_from(base.subquery())) or 0)

    def page(self, stmt: Select[M], *, limit: int, offset: int) -> tuple[Sequence[M], int]:
        """One page of results and the total count."""
        total = self.count(stmt)
        rows: Sequence[M] = self.session.scalars(stmt.limit(limit).offset(offset)).all()
        return rows, total
