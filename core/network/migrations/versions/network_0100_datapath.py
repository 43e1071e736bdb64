"""network segments and hypervisor VTEPs

Revision ID: network_0100_datapath
Revises: network_0001
Networks made before keep their type columns; they get a segment row when the
provider network is ensured (core.network.bootstrap) or never (see segments.py).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "network_0100_datapath"
down_revision = "network_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "network_segments",
        sa.Column("network_id", sa.String(length=36), nullable=False),
        sa.Column("network_type", sa.String(length=16), nullable=False),
        sa.Column("physical_network", sa.String(length=64), nullable=False),
        sa.Column("segmentation_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["network_id"], ["networks.id"],
                                name=op.f("fk_network_segments_network_id_networks"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("network_id", name=op.f("pk_network_segments")),
        sa.UniqueConstraint("network_type", "physical_network", "segmentation_id",
                            name="uq_network_segments_allocation"),
    )
    op.create_table(
        "host_vteps",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("host", name=op.f("pk_host_vteps")),
    )


def downgrade() -> None:
    op.drop_table("host_vteps")
    op.drop_table("network_segments")
