"""routers, router ports and floating IPs

Revision ID: network_0100_routers
Revises: network_0100_secgroups
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "network_0100_routers"
down_revision = "network_0100_secgroups"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "routers",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=True),
        sa.Column("admin_state_up", sa.Boolean(), nullable=False),
        sa.Column("enable_snat", sa.Boolean(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("revision_number", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.Column("updated_at", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_routers")),
    )
    with op.batch_alter_table("routers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_routers_project_id"), ["project_id"], unique=False)

    op.create_table(
        "router_ports",
        sa.Column("port_id", sa.String(length=36), nullable=False),
        sa.Column("router_id", sa.String(length=36), nullable=False),
        sa.Column("port_type", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(["port_id"], ["ports.id"],
                                name=op.f("fk_router_ports_port_id_ports"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["router_id"], ["routers.id"],
                                name=op.f("fk_router_ports_router_id_routers")),
        sa.PrimaryKeyConstraint("port_id", name=op.f("pk_router_ports")),
    )
    with op.batch_alter_table("router_ports", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_router_ports_router_id"), ["router_id"],
                              unique=False)

    op.create_table(
        "floating_ips",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=True),
        sa.Column("floating_ip_address", sa.String(length=64), nullable=False),
        sa.Column("floating_network_id", sa.String(length=36), nullable=False),
        sa.Column("floating_port_id", sa.String(length=36), nullable=False),
        sa.Column("fixed_port_id", sa.String(length=36), nullable=True),
        sa.Column("fixed_ip_address", sa.String(length=64), nullable=True),
        sa.Column("router_id", sa.String(length=36), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.Column("updated_at", sa.Float(precision=53), nullable=False),
        sa.ForeignKeyConstraint(["fixed_port_id"], ["ports.id"],
                                name=op.f("fk_floating_ips_fixed_port_id_ports"),
                                ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["floating_network_id"], ["networks.id"],
                                name=op.f("fk_floating_ips_floating_network_id_networks")),
        sa.ForeignKeyConstraint(["floating_port_id"], ["ports.id"],
                                name=op.f("fk_floating_ips_floating_port_id_ports")),
        sa.ForeignKeyConstraint(["router_id"], ["routers.id"],
                                name=op.f("fk_floating_ips_router_id_routers")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_floating_ips")),
        sa.UniqueConstraint("floating_network_id", "fixed_port_id", "fixed_ip_address",
                            name="uq_floating_ips_fixed"),
        sa.UniqueConstraint("floating_port_id", name=op.f("uq_floating_ips_floating_port_id")),
    )
    with op.batch_alter_table("floating_ips", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_floating_ips_fixed_port_id"), ["fixed_port_id"],
                              unique=False)
        batch_op.create_index(batch_op.f("ix_floating_ips_floating_network_id"),
                              ["floating_network_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_floating_ips_project_id"), ["project_id"],
                              unique=False)
        batch_op.create_index(batch_op.f("ix_floating_ips_router_id"), ["router_id"],
                              unique=False)


def downgrade() -> None:
    op.drop_table("floating_ips")
    op.drop_table("router_ports")
    op.drop_table("routers")
