"""auth_failures: failed password authentications per user and per client address

Revision ID: identity_0002
Revises: identity_0001
Legacy: the shared chain's revision 0005 created these tables (a database
migrated by it is stamped here, not migrated again: core.common.migrate).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "identity_0002"
down_revision = "identity_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auth_failures",
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("last_at", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("subject", name=op.f("pk_auth_failures")),
    )
    with op.batch_alter_table("auth_failures", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_auth_failures_last_at"), ["last_at"], unique=False)


def downgrade() -> None:
    op.drop_table("auth_failures")

