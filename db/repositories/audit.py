"""Admin audit log: append-only records of every mutating admin call."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select

from db.models import AuditEntry
from db.repositories.base import RepositoryBase


class AuditRepository(RepositoryBase[AuditEntry]):
    model = AuditEntry

    def record(
        self, actor: str, action: str, target: str | None = None, **details: Any
    ) -> AuditEntry:
        """Append one entry (flushed, not committed)."""
        return self.add(AuditEntry(actor=actor, action=action, target=target, details=details))

    def query(self, *, action: str | None = None, actor: str | None = None) -> Select[AuditEntry]:
        """A select of entries, newest first, optionally filtered."""
        stmt = select(AuditEntry).order_by(AuditEntry.id.desc())
        if action:
            stmt = stmt.where(AuditEntry.action == action)
        if actor:
            stmt = stmt.where(AuditEntry.actor == actor)
        return stmt
