"""durable updates and delivery leases: the `updates` inbox, jobs.update_id, delivery lease

`updates` keeps each Telegram update from before Telegram is told it was received until its
handler finished; `jobs.update_id` (unique) makes a replayed update find the job it created;
`jobs.delivery_owner`, `delivery_lease_expires_at` and `delivery_step` bound a lost delivery
(the sweep sends it again once the lease expired, going on after the last send recorded).

Revision ID: 6448aa6da938
Revises: 2eaed4ce02fb
Create Date: 2026-12-07 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

import db.base
from alembic import op

revision: str = "6448aa6da938"
down_revision: str | None = "2eaed4ce02fb"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "updates",
        sa.Column("update_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column(
            "payload", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column("received_at", db.base.UTCDateTime(), nullable=False),
        sa.Column("done_at", db.base.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("update_id", name=op.f("pk_updates")),
    )
    op.create_index(op.f("ix_updates_done_at"), "updates", ["done_at"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("update_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("delivery_owner", sa.String(length=128), nullable=True))
        batch.add_column(
            sa.Column("delivery_lease_expires_at", db.base.UTCDateTime(), nullable=True)
        )
        batch.add_column(
            sa.Column("delivery_step", sa.Integer(), server_default="0", nullable=False)
        )
        batch.create_unique_constraint(op.f("uq_jobs_update_id"), ["update_id"])
        batch.create_index("ix_jobs_delivery_lease_expires_at", ["delivery_lease_expires_at"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_delivery_lease_expires_at")
        batch.drop_constraint(op.f("uq_jobs_update_id"), type_="unique")
        batch.drop_column("delivery_step")
        batch.drop_column("delivery_lease_expires_at")
        batch.drop_column("delivery_owner")
        batch.drop_column("update_id")
    op.drop_index(op.f("ix_updates_done_at"), table_name="updates")
    op.drop_table("updates")
