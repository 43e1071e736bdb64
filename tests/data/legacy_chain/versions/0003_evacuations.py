"""evacuation records: one row per host failure event and one per instance of it

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 19:39:03.582478
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evacuation_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("open_host", sa.String(length=255), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("detected_at", sa.Float(precision=53), nullable=False),
        sa.Column("alive_at", sa.Float(precision=53), nullable=False),
        sa.Column("fenced_at", sa.Float(precision=53), nullable=True),
        sa.Column("fence_confirmed_at", sa.Float(precision=53), nullable=True),
        sa.Column("disabled_at", sa.Float(precision=53), nullable=True),
        sa.Column("forced_down_at", sa.Float(precision=53), nullable=True),
        sa.Column("first_rebuild_at", sa.Float(precision=53), nullable=True),
        sa.Column("last_rebuild_at", sa.Float(precision=53), nullable=True),
        sa.Column("all_active_at", sa.Float(precision=53), nullable=True),
        sa.Column("finished_at", sa.Float(precision=53), nullable=True),
        sa.Column("reenabled_at", sa.Float(precision=53), nullable=True),
        sa.Column("alerts", sa.Text(), nullable=False),
        sa.Column("storm_override", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evacuation_events")),
        sa.UniqueConstraint("open_host", name=op.f("uq_evacuation_events_open_host")),
    )
    with op.batch_alter_table("evacuation_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_evacuation_events_host"), ["host"], unique=False)
        batch_op.create_index(batch_op.f("ix_evacuation_events_state"), ["state"], unique=False)

    op.create_table(
        "evacuation_instances",
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("expected_vm_state", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=255), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_try_at", sa.Float(precision=53), nullable=False),
        sa.Column("started_at", sa.Float(precision=53), nullable=True),
        sa.Column("finished_at", sa.Float(precision=53), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"], ["evacuation_events.id"],
            name=op.f("fk_evacuation_instances_event_id_evacuation_events"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("event_id", "instance_id", name=op.f("pk_evacuation_instances")),
    )
    with op.batch_alter_table("evacuation_instances", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_evacuation_instances_instance_id"), ["instance_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_evacuation_instances_state"), ["state"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("evacuation_instances", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evacuation_instances_state"))
        batch_op.drop_index(batch_op.f("ix_evacuation_instances_instance_id"))
    op.drop_table("evacuation_instances")
    with op.batch_alter_table("evacuation_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evacuation_events_state"))
        batch_op.drop_index(batch_op.f("ix_evacuation_events_host"))
    op.drop_table("evacuation_events")
