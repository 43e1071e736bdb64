"""security groups, their rules, default groups, port bindings and port security

Revision ID: network_0100_secgroups
Revises: network_0100_datapath
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "network_0100_secgroups"
down_revision = "network_0100_datapath"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "security_groups",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("stateful", sa.Boolean(), nullable=False),
        sa.Column("revision_number", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.Column("updated_at", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_security_groups")),
    )
    with op.batch_alter_table("security_groups", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_security_groups_name"), ["name"], unique=False)
        batch_op.create_index(batch_op.f("ix_security_groups_project_id"), ["project_id"],
                              unique=False)

    op.create_table(
        "security_group_rules",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("security_group_id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=True),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("ethertype", sa.String(length=8), nullable=False),
        sa.Column("protocol", sa.String(length=40), nullable=True),
        sa.Column("port_range_min", sa.Integer(), nullable=True),
        sa.Column("port_range_max", sa.Integer(), nullable=True),
        sa.Column("remote_ip_prefix", sa.String(length=64), nullable=True),
        sa.Column("remote_group_id", sa.String(length=36), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.Column("updated_at", sa.Float(precision=53), nullable=False),
        sa.ForeignKeyConstraint(
            ["security_group_id"], ["security_groups.id"],
            name=op.f("fk_security_group_rules_security_group_id_security_groups"),
            ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["remote_group_id"], ["security_groups.id"],
            name=op.f("fk_security_group_rules_remote_group_id_security_groups"),
            ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_security_group_rules")),
    )
    with op.batch_alter_table("security_group_rules", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_security_group_rules_security_group_id"),
                              ["security_group_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_security_group_rules_project_id"),
                              ["project_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_security_group_rules_remote_group_id"),
                              ["remote_group_id"], unique=False)

    op.create_table(
        "default_security_groups",
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("security_group_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["security_group_id"], ["security_groups.id"],
            name=op.f("fk_default_security_groups_security_group_id_security_groups"),
            ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_default_security_groups")),
    )

    op.create_table(
        "security_group_port_bindings",
        sa.Column("port_id", sa.String(length=36), nullable=False),
        sa.Column("security_group_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["port_id"], ["ports.id"],
            name=op.f("fk_security_group_port_bindings_port_id_ports"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["security_group_id"], ["security_groups.id"],
            name=op.f("fk_security_group_port_bindings_security_group_id_security_groups")),
        sa.PrimaryKeyConstraint("port_id", "security_group_id",
                                name=op.f("pk_security_group_port_bindings")),
    )
    with op.batch_alter_table("security_group_port_bindings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_security_group_port_bindings_security_group_id"),
                              ["security_group_id"], unique=False)

    op.create_table(
        "port_security",
        sa.Column("port_id", sa.String(length=36), nullable=False),
        sa.Column("port_security_enabled", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["port_id"], ["ports.id"],
                                name=op.f("fk_port_security_port_id_ports"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("port_id", name=op.f("pk_port_security")),
    )


def downgrade() -> None:
    op.drop_table("port_security")
    op.drop_table("security_group_port_bindings")
    op.drop_table("default_security_groups")
    op.drop_table("security_group_rules")
    op.drop_table("security_groups")
