"""subnets' revision_number (bumped by every update, as Neutron's)

Revision ID: network_0100_subnetput
Revises: network_0100_routers
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "network_0100_subnetput"
down_revision = "network_0100_routers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ALTER TABLE ... ADD COLUMN, never a batch copy: on SQLite a batch would drop
    # and re-create ``subnets``, and the drop cascades to ip_allocations' rows
    op.add_column("subnets", sa.Column("revision_number", sa.Integer(), nullable=False,
                                       server_default="0"))


def downgrade() -> None:
    op.drop_column("subnets", "revision_number")  # plain ALTER (see upgrade)
