"""subnets' allocation pools in their own table (several per subnet, as Neutron's)

Every subnet's one pool (``subnets.pool_start``/``pool_end``) becomes its row of
``subnet_allocation_pools``, then the two columns go. A downgrade puts each
subnet's pool back into the columns and refuses (before changing anything) when a
subnet has several pools or none: the old schema cannot hold them, and silently
keeping one would hand out addresses the operator excluded.

Revision ID: network_0100_apigaps
Revises: network_0100_subnetput
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "network_0100_apigaps"
down_revision = "network_0100_subnetput"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subnet_allocation_pools",
        sa.Column("subnet_id", sa.String(length=36), nullable=False),
        sa.Column("first_ip", sa.String(length=64), nullable=False),
        sa.Column("last_ip", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["subnet_id"], ["subnets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("subnet_id", "first_ip"),
    )
    op.execute("INSERT INTO subnet_allocation_pools (subnet_id, first_ip, last_ip) "
               "SELECT id, pool_start, pool_end FROM subnets")
    # plain ALTER TABLE ... DROP COLUMN, never a batch copy: on SQLite a batch would drop
    # and re-create ``subnets``, and the drop cascades to ip_allocations' rows
    op.drop_column("subnets", "pool_start")
    op.drop_column("subnets", "pool_end")


def downgrade() -> None:
    conn = op.get_bind()
    counts = conn.execute(sa.text(
        "SELECT s.id, COUNT(p.first_ip) FROM subnets s LEFT JOIN subnet_allocation_pools p "
        "ON p.subnet_id = s.id GROUP BY s.id")).all()
    odd = sorted(str(sid) for sid, n in counts if n != 1)
    if odd:
        raise RuntimeError(f"cannot downgrade: subnets {', '.join(odd)} do not have exactly "
                           "one allocation pool, which is all the old schema holds")
    op.add_column("subnets", sa.Column("pool_start", sa.String(length=64), nullable=True))
    op.add_column("subnets", sa.Column("pool_end", sa.String(length=64), nullable=True))
    op.execute("UPDATE subnets SET "
               "pool_start = (SELECT first_ip FROM subnet_allocation_pools p "
               "WHERE p.subnet_id = subnets.id), "
               "pool_end = (SELECT last_ip FROM subnet_allocation_pools p "
               "WHERE p.subnet_id = subnets.id)")
    op.drop_table("subnet_allocation_pools")
