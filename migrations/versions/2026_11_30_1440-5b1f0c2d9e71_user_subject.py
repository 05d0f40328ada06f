"""user subject override; job kind 'upscale' (a VARCHAR value, no DDL)

Revision ID: 5b1f0c2d9e71
Revises: 423ffe468bcb
Create Date: 2026-11-30 14:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5b1f0c2d9e71"
down_revision: str | None = "423ffe468bcb"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("subject", sa.String(length=16), nullable=True))


def downgrade() -> None:
    # Upscale jobs cannot be represented before this revision.
    op.execute("DELETE FROM jobs WHERE kind = 'upscale'")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("subject")
