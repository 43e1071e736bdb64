"""cloud settings

Revision ID: common_0002
Revises: common_0001
Legacy: the shared chain's revision 0002 created these tables (a database
migrated by it is stamped here, not migrated again: core.common.migrate).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = 'common_0002'
down_revision = 'common_0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "haven_settings",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_haven_settings")),
    )


def downgrade() -> None:
    op.drop_table("haven_settings")

