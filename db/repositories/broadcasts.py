"""Admin broadcasts and their progress."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Select, func, select

from db.models import Broadcast, User
from db.repositories.base import RepositoryBase
from db.repositories.users import broadcast_audience


class BroadcastRepository(RepositoryBase[Broadcast]):
    model = Broadcast

    def query(self) -> Select[Broadcast]:
        return select(Broadcast).order_by(Broadcast.id.desc())

    def count_recipients(self, after_id: int = 0) -> int:
        """The broadcast audience with id > after_id (`users.broadcast_audience`)."""
        return int(
            self.session.scalar(
                select(func.count(User.id)).where(User.id > after_id, broadcast_audience())
            )
            or 0
        )

    def stalled(self, updated_before: datetime, limit: int = 100) -> Sequence[Broadcast]:
        """Queued broadcasts not touched since a moment (their task may never have run)."""
        return self.session.scalars(
            select(Broadcast)
            .where(Broadcast.status == "queued", Broadcast.updated_at < updated_before)
            .order_by(Broadcast.id)
            .limit(limit)
        ).all()

    def counts_by_status(self) -> dict[str, int]:
        rows = self.session.execute(
            select(Broadcast.status, func.count(Broadcast.id)).group_by(Broadcast.status)
        ).all()
        return {str(status): int(n) for status, n in rows}
