"""final job states stay final: delivery recorded in its own columns

`delivered` was a status after succeeded/failed, which hid the true outcome. Rows in it get their
outcome back (an error code means it failed, otherwise it succeeded); `delivered_at` stays.

Revision ID: 7c3e9a41d2b8
Revises: 5b1f0c2d9e71
Create Date: 2026-11-30 16:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7c3e9a41d2b8"
down_revision: str | None = "5b1f0c2d9e71"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("delivery_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("delivery_error", sa.Text(), nullable=True))
    op.execute(
        "UPDATE jobs SET status = 'failed' WHERE status = 'delivered' AND error_code IS NOT NULL"
    )
    op.execute("UPDATE jobs SET status = 'succeeded' WHERE status = 'delivered'")
    op.execute("UPDATE jobs SET delivery_attempts = 1 WHERE delivered_at IS NOT NULL")


def downgrade() -> None:
    op.execute(
        "UPDATE jobs SET status = 'delivered' WHERE delivered_at IS NOT NULL "
        "AND status IN ('succeeded', 'failed')"
    )
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("delivery_error")
        batch.drop_column("delivery_attempts")
