"""Compute tables: flavors, instances, hypervisors (services and their resources),
server groups, and migration records (the tombstones evacuation leaves)."""

from __future__ import annotations

import uuid

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.common.db import Base, Timestamp, part_metadata


def new_uuid() -> str:
    return str(uuid.uuid4())


class ComputeTable(Base):
    """Base of compute's tables: their metadata is the compute schema part's."""

    __abstract__ = True
    metadata = part_metadata()


class Flavor(ComputeTable):
    __tablename__ = "flavors"
    id: Mapped[str] = mapped_column(String(255), primary_key=True, default=new_uuid)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    ram_mb: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer)
    is_public: Mapped[bool] = mapped_column(Boolean, default=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class ComputeService(ComputeTable):
    """One compute agent (hypervisor): liveness, admin state, and its resources.

    ``generation`` is bumped by every claim: a claim is an UPDATE that names the
    generation it read, so two schedulers racing for the last slot of a host
    cannot both win (one UPDATE matches no row and tries elsewhere).
    """

    __tablename__ = "compute_services"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    host: Mapped[str] = mapped_column(String(255), unique=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    forced_down: Mapped[bool] = mapped_column(Boolean, default=False)
    reserved: Mapped[bool] = mapped_column(Boolean, default=False)
    last_seen: Mapped[float] = mapped_column(Timestamp, default=0.0)
    started_at: Mapped[float] = mapped_column(Timestamp, default=0.0)
    hypervisor_type: Mapped[str] = mapped_column(String(32), default="QEMU")
    host_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    vcpus: Mapped[int] = mapped_column(Integer, default=0)
    memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    disk_gb: Mapped[int] = mapped_column(Integer, default=0)
    vcpus_used: Mapped[int] = mapped_column(Integer, default=0)
    memory_mb_used: Mapped[int] = mapped_column(Integer, default=0)
    disk_gb_used: Mapped[int] = mapped_column(Integer, default=0)
    cpu_ratio: Mapped[float] = mapped_column(Float, default=4.0)
    ram_ratio: Mapped[float] = mapped_column(Float, default=1.0)
    reserved_memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Timestamp, default=0.0)
    updated_at: Mapped[float] = mapped_column(Timestamp, default=0.0)


class ServerGroup(ComputeTable):
    __tablename__ = "server_groups"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    name: Mapped[str] = mapped_column(String(255))
    policy: Mapped[str] = mapped_column(String(32))
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[str] = mapped_column(String(64))
    generation: Mapped[int] = mapped_column(Integer, default=0)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Timestamp, default=0.0)


class Instance(ComputeTable):
    __tablename__ = "instances"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    name: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[str] = mapped_column(String(64))
    flavor_id: Mapped[str] = mapped_column(String(255))
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    root_gb: Mapped[int] = mapped_column(Integer)
    image_id: Mapped[str] = mapped_column(String(36))
    network_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    port_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    fixed_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    mac_address: Mapped[str | None] = mapped_column(String(32), nullable=True)
    host: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    claimed_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    server_group_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    vm_state: Mapped[str] = mapped_column(String(32), index=True)
    task_state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    power_state: Mapped[int] = mapped_column(Integer, default=0)
    fault: Mapped[str | None] = mapped_column(Text, nullable=True)
    key_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Nova's key_data: the public key of key_name as it was at create (the metadata
    # service serves it even after the keypair is deleted)
    key_data: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Nova's user_data: the base64 text the client sent (at most 65535 characters)
    user_data: Mapped[str | None] = mapped_column(Text, nullable=True)
    config_drive: Mapped[bool] = mapped_column(Boolean, default=False)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    created_at: Mapped[float] = mapped_column(Timestamp)
    updated_at: Mapped[float] = mapped_column(Timestamp)
    launched_at: Mapped[float | None] = mapped_column(Timestamp, nullable=True)
    deleted_at: Mapped[float | None] = mapped_column(Timestamp, nullable=True)
    # Timings the boot benchmark reads (seconds since the epoch).
    scheduled_at: Mapped[float | None] = mapped_column(Timestamp, nullable=True)
    spawn_started_at: Mapped[float | None] = mapped_column(Timestamp, nullable=True)


class InstanceMetadata(ComputeTable):
    __tablename__ = "instance_metadata"
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"),
                                             primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


class Migration(ComputeTable):
    """A record that an instance moved from ``source_host`` (an evacuation).

    The returning source host reads these as tombstones: a domain of an
    instance that was evacuated away is destroyed there, never started.
    """

    __tablename__ = "migrations"
    __table_args__ = (UniqueConstraint("instance_id", "source_host", "created_at",
                                       name="uq_migrations_instance"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    instance_id: Mapped[str] = mapped_column(String(36), index=True)
    source_host: Mapped[str] = mapped_column(String(255), index=True)
    dest_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    kind: Mapped[str] = mapped_column(String(32), default="evacuation")
    status: Mapped[str] = mapped_column(String(32), default="accepted")
    created_at: Mapped[float] = mapped_column(Timestamp)
    updated_at: Mapped[float] = mapped_column(Timestamp)
