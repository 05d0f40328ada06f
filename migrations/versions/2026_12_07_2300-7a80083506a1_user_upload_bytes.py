"""bytes of photos each user stored today (the daily upload cap)

`users.upload_day` is the UTC day the counter belongs to and `users.upload_bytes` what the
user stored that day (selfies, template, pose and training photos): a counter, not a sum over
photo rows, so photos deleted since (older template photos beyond the cap, /photos) still
count.

Revision ID: 7a80083506a1
Revises: b4d8e2a6c913
Create Date: 2026-12-07 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7a80083506a1"
down_revision: str | None = "b4d8e2a6c913"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("upload_day", sa.Date(), nullable=True))
        batch.add_column(
            sa.Column("upload_bytes", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("upload_bytes")
        batch.drop_column("upload_day")
