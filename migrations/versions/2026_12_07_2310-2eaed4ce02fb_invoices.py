"""invoices: every invoice the bot issues is a row, and a payment is credited from that row
only; a payment that matches none is kept with the reason and credits nothing

Invoices issued before this revision carry the old `pk:<pack>:<credits>:<stars>:<user>:<ms>`
payload and have no row. For a grace period (`service_state` row `payments.legacy_invoices`:
issued before this upgrade, paid within a day of it) such a payload is matched by creating its
row when its pack still sells the same credits for the same Stars; after that it is refused at
checkout and a payment of it is kept as unmatched.

Revision ID: 2eaed4ce02fb
Revises: 20f487c1b739
Create Date: 2026-12-07 23:10:00
"""

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa

import db.base
from alembic import op

revision: str = "2eaed4ce02fb"
down_revision: str | None = "20f487c1b739"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEGACY = "payments.legacy_invoices"
# How long after the upgrade an old `pk:` invoice may still be paid.
GRACE_MS = 24 * 3600 * 1000


def upgrade() -> None:
    op.create_table(
        "invoices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("payload", sa.String(length=128), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("telegram_id", sa.BigInteger(), nullable=False),
        sa.Column("pack_id", sa.Integer(), nullable=True),
        sa.Column("title", sa.String(length=32), nullable=False),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.Column("stars", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=8), nullable=False),
        sa.Column("issued_at", db.base.UTCDateTime(), nullable=False),
        sa.Column("expires_at", db.base.UTCDateTime(), nullable=False),
        sa.Column("paid_at", db.base.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_invoices_user_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["pack_id"], ["packs.id"], name=op.f("fk_invoices_pack_id_packs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoices")),
        sa.UniqueConstraint("payload", name=op.f("uq_invoices_payload")),
    )
    with op.batch_alter_table("invoices") as batch:
        batch.create_index(batch.f("ix_invoices_user_id"), ["user_id"], unique=False)
        batch.create_index(batch.f("ix_invoices_issued_at"), ["issued_at"], unique=False)
    with op.batch_alter_table("payments") as batch:
        batch.add_column(sa.Column("invoice_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("unmatched", sa.String(length=16), nullable=True))
        batch.create_foreign_key(
            batch.f("fk_payments_invoice_id_invoices"),
            "invoices",
            ["invoice_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_index(batch.f("ix_payments_invoice_id"), ["invoice_id"], unique=False)
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    value = json.dumps({"issued_before_ms": now_ms, "paid_until_ms": now_ms + GRACE_MS})
    stamp = now.strftime("%Y-%m-%d %H:%M:%S.%f")
    if op.get_context().dialect.name == "postgresql":
        stamp += "+00:00"
    # Literal SQL, so that `alembic upgrade --sql` renders it too.
    op.execute(
        "INSERT INTO service_state (name, value, updated_at) "
        f"VALUES ('{LEGACY}', '{value}', '{stamp}')"
    )


def downgrade() -> None:
    op.execute(f"DELETE FROM service_state WHERE name = '{LEGACY}'")
    with op.batch_alter_table("payments") as batch:
        batch.drop_index(batch.f("ix_payments_invoice_id"))
        batch.drop_constraint(batch.f("fk_payments_invoice_id_invoices"), type_="foreignkey")
        batch.drop_column("unmatched")
        batch.drop_column("invoice_id")
    op.drop_table("invoices")
