"""Outgoing webhook endpoints and their deliveries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Select, func, select

from db.models import WebhookDelivery, WebhookEndpoint
from db.repositories.base import RepositoryBase


class WebhookEndpointRepository(RepositoryBase[WebhookEndpoint]):
    model = WebhookEndpoint

    def query(self) -> Select[WebhookEndpoint]:
        return select(WebhookEndpoint).order_by(WebhookEndpoint.id)

    def subscribed(self, event: str) -> list[WebhookEndpoint]:
        """Enabled endpoints subscribed to `event` (filtered here: JSON differs by dialect)."""
        rows = self.session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.enabled.is_(True))
            .order_by(WebhookEndpoint.id)
        ).all()
        return [row for row in rows if event in (row.events or [])]


class WebhookDeliveryRepository(RepositoryBase[WebhookDelivery]):
    model = WebhookDelivery

    def query(
        self, *, endpoint_id: int | None = None, status: str | None = None
    ) -> Select[WebhookDelivery]:
        """A select of deliveries, newest first, optionally filtered."""
        stmt = select(WebhookDelivery).order_by(WebhookDelivery.id.desc())
        if endpoint_id is not None:
            stmt = stmt.where(WebhookDelivery.endpoint_id == endpoint_id)
        if status:
            stmt = stmt.where(WebhookDelivery.status == status)
        return stmt

    def stale_pending(
        self, created_before: datetime, limit: int = 100
    ) -> Sequence[WebhookDelivery]:
        """Pending deliveries never attempted (their task was lost before reaching the broker)."""
        return self.session.scalars(
            select(WebhookDelivery)
            .where(
                WebhookDelivery.status == "pending",
                WebhookDelivery.attempts == 0,
                WebhookDelivery.created_at < created_before,
            )
            .order_by(WebhookDelivery.id)
            .limit(limit)
        ).all()

    def counts_by_status(self) -> dict[str, int]:
        rows = self.session.execute(
            select(WebhookDelivery.status, func.count(WebhookDelivery.id)).group_by(
                WebhookDelivery.status
            )
        ).all()
        return {str(status): int(n) for status, n in rows}
