"""cancellations are delivered like every other outcome

A cancellation recorded outside the chat (by the sweep for a lost worker, by a claim, by an
admin) is now told to the chat by the io worker and, when that message is lost, by the sweep,
which re-sends every final outcome without `delivered_at`. The user's own Cancel button shows the
cancellation itself and records it as delivered. Cancelled rows from before were handled (or
shown) by the old code: they are recorded as delivered, so the first sweep after the upgrade
sends no old cancellation again.

Revision ID: b4d8e2a6c913
Revises: 9e4a6c2f7b15
Create Date: 2026-11-30 23:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "b4d8e2a6c913"
down_revision: str | None = "9e4a6c2f7b15"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "UPDATE jobs SET delivered_at = COALESCE(finished_at, updated_at)"
        " WHERE status = 'cancelled' AND delivered_at IS NULL AND delivery_error IS NULL"
    )


def downgrade() -> None:
    """Nothing to undo: data only, and the older code never reads a cancelled job's
    delivered_at."""
