"""keypairs, and what a server keeps of its key, user data and config drive request

Revision ID: compute_0100_keypairs
Revises: compute_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "compute_0100_keypairs"
down_revision = "compute_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_pairs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=255), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_pairs")),
        sa.UniqueConstraint("user_id", "name", name="uq_key_pairs_user_id_name"),
    )
    with op.batch_alter_table("key_pairs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_key_pairs_user_id"), ["user_id"], unique=False)
    # plain ALTER TABLE ... ADD COLUMN, never a batch copy: on SQLite a batch would drop
    # and re-create ``instances``, and the drop cascades to instance_metadata's rows
    op.add_column("instances", sa.Column("key_data", sa.Text(), nullable=True))
    op.add_column("instances", sa.Column("user_data", sa.Text(), nullable=True))
    op.add_column("instances", sa.Column("config_drive", sa.Boolean(), nullable=False,
                                         server_default=sa.false()))


def downgrade() -> None:
    for column in ("config_drive", "user_data", "key_data"):
        op.drop_column("instances", column)  # plain ALTER (see upgrade)
    op.drop_table("key_pairs")
