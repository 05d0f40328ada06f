"""one lease per running job: its owner and its expiry (database clock)

Revision ID: 8d2f5b7a1c34
Revises: 7c3e9a41d2b8
Create Date: 2026-11-30 17:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

import db.base
from alembic import op

revision: str = "8d2f5b7a1c34"
down_revision: str | None = "7c3e9a41d2b8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", db.base.UTCDateTime(), nullable=True))
        batch.create_index("ix_jobs_lease_expires_at", ["lease_expires_at"])
    # Jobs already published or running when this ships carry no lease: expire one now, so the
    # first sweep re-queues them (a duplicate of a message still queued is dropped by the claim;
    # a job whose old-style worker is gone is taken over).
    op.execute(
        "UPDATE jobs SET lease_expires_at = CURRENT_TIMESTAMP "
        "WHERE status IN ('queued', 'running') AND dispatched_at IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_lease_expires_at")
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
