"""paid generations in Telegram Stars: packs, payments, the credit ledger; what each job was
charged; users' credits and /forget time

Revision ID: 9e4a6c2f7b15
Revises: 8d2f5b7a1c34
Create Date: 2026-11-30 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

import db.base
from alembic import op

revision: str = "9e4a6c2f7b15"
down_revision: str | None = "8d2f5b7a1c34"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEDGER_KINDS = ("purchase", "spend", "giveback", "refund", "grant")
# core.errors.USER_INPUT_CODES as of this revision (frozen here: a migration must not change).
USER_INPUT_CODES = (
    "not_an_image",
    "image_too_large",
    "no_face",
    "multiple_faces",
    "face_too_small",
    "poor_quality",
    "invalid",
    "invalid_lora",
    "selfie_required",
)


def upgrade() -> None:
    op.create_table(
        "packs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=32), nullable=False),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.Column("stars", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("created_at", db.base.UTCDateTime(), nullable=False),
        sa.Column("updated_at", db.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_packs")),
    )
    op.create_table(
        "payments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("charge_id", sa.String(length=255), nullable=False),
        sa.Column("provider_charge_id", sa.String(length=255), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("telegram_id", sa.BigInteger(), nullable=False),
        sa.Column("pack_id", sa.Integer(), nullable=True),
        sa.Column("title", sa.String(length=32), nullable=False),
        sa.Column("stars", sa.Integer(), nullable=False),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.Column("created_at", db.base.UTCDateTime(), nullable=False),
        sa.Column("refunded_at", db.base.UTCDateTime(), nullable=True),
        sa.Column("refund_debited", sa.Integer(), nullable=True),
        sa.Column("refund_shortfall", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_payments_user_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["pack_id"], ["packs.id"], name=op.f("fk_payments_pack_id_packs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments")),
        sa.UniqueConstraint("charge_id", name=op.f("uq_payments_charge_id")),
    )
    with op.batch_alter_table("payments") as batch:
        batch.create_index(batch.f("ix_payments_user_id"), ["user_id"], unique=False)
        batch.create_index(batch.f("ix_payments_created_at"), ["created_at"], unique=False)
    op.create_table(
        "ledger",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(*LEDGER_KINDS, name="ledgerkind", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("delta", sa.Integer(), nullable=False),
        sa.Column("balance", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("payment_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=64), nullable=True),
        sa.Column("note", sa.String(length=255), nullable=True),
        sa.Column("created_at", db.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_ledger_user_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_ledger_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"],
            ["payments.id"],
            name=op.f("fk_ledger_payment_id_payments"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger")),
        sa.UniqueConstraint("kind", "job_id", name="uq_ledger_kind_job"),
        sa.UniqueConstraint("kind", "payment_id", name="uq_ledger_kind_payment"),
    )
    with op.batch_alter_table("ledger") as batch:
        batch.create_index(batch.f("ix_ledger_user_id"), ["user_id"], unique=False)
        batch.create_index(batch.f("ix_ledger_created_at"), ["created_at"], unique=False)
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("credits", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("forgotten_at", db.base.UTCDateTime(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("charge", sa.String(length=8), nullable=True))
        batch.add_column(
            sa.Column("charge_credits", sa.Integer(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("charge_returned_at", db.base.UTCDateTime(), nullable=True))
    # Jobs made before this revision held a quota slot the way the quota counted them then
    # (every portrait or template job not cancelled), so a deploy in the middle of a day frees
    # no slot by itself; a failure that was not the user's gives its slot back, as from now on.
    op.execute(
        "UPDATE jobs SET charge = 'quota' "
        "WHERE kind IN ('portrait', 'template') AND status <> 'cancelled'"
    )
    codes = ", ".join(f"'{c}'" for c in USER_INPUT_CODES)
    op.execute(
        "UPDATE jobs SET charge_returned_at = finished_at "
        "WHERE charge = 'quota' AND status = 'failed' "
        f"AND (error_code IS NULL OR error_code NOT IN ({codes}))"
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("charge_returned_at")
        batch.drop_column("charge_credits")
        batch.drop_column("charge")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("forgotten_at")
        batch.drop_column("credits")
    op.drop_table("ledger")
    op.drop_table("payments")
    op.drop_table("packs")
