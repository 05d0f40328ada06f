"""Admin audit log: append-only records of every mutating admin call."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select

from db.models import AuditEntry
from db.repositories.base import RepositoryBase


class AuditRepository(RepositoryBase[AuditEntry]):
    model = AuditEntry

    def record(
        self, actor: str, action: str, target: str | None = None, **details: Any
    ) -> AuditEntry:
        """Append one entry (flushed, not committed)."""
        return self.add(AuditEntry(actor=actor, action=action, target=target, details=details))

    def count_since(self, action_prefix: str, target: str, since: datetime) -> int:
        """Entries of actions starting with `action_prefix` on `target` since `since`."""
        return int(
            self.session.scalar(
                select(func.count(AuditEntry.id)).where(
                    AuditEntry.action.startswith(action_prefix, autoescape=True),
                    AuditEntry.target == target,
                    AuditEntry.created_at >= since,
                )
            )
            or 0
        )

    def counts_by_action(self, action_prefix: str) -> dict[str, int]:
        """How many entries each action starting with `action_prefix` has."""
        rows = self.session.execute(
            select(AuditEntry.action, func.count(AuditEntry.id))
            .where(AuditEntry.action.startswith(action_prefix, autoescape=True))
            .group_by(AuditEntry.action)
        ).all()
        return {str(action): int(count) for action, count in rows}

    def query(self, *, action: str | None = None, actor: str | None = None) -> Select[AuditEntry]:
        """A select of entries, newest first, optionally filtered."""
        stmt = select(AuditEntry).order_by(AuditEntry.id.desc())
        if action:
            stmt = stmt.where(AuditEntry.action == action)
        if actor:
            stmt = stmt.where(AuditEntry.actor == actor)
        return stmt
