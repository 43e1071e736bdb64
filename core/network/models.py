"""Networks, subnets, ports and IP allocations (Neutron v2.0 subset)."""

from __future__ import annotations

import uuid

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.common.db import Base, Timestamp, part_metadata


def new_uuid() -> str:
    return str(uuid.uuid4())


class NetworkTable(Base):
    """Base of network's tables: their metadata is the network schema part's."""

    __abstract__ = True
    metadata = part_metadata()


class Network(NetworkTable):
    __tablename__ = "networks"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    name: Mapped[str] = mapped_column(String(255), default="", index=True)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    external: Mapped[bool] = mapped_column(Boolean, default=False)
    admin_state_up: Mapped[bool] = mapped_column(Boolean, default=True)
    network_type: Mapped[str] = mapped_column(String(32), default="flat")
    physical_network: Mapped[str | None] = mapped_column(String(64), nullable=True)
    mtu: Mapped[int] = mapped_column(Integer, default=1500)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Timestamp)
    updated_at: Mapped[float] = mapped_column(Timestamp)


class Subnet(NetworkTable):
    __tablename__ = "subnets"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    name: Mapped[str] = mapped_column(String(255), default="")
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id", ondelete="CASCADE"),
                                            index=True)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cidr: Mapped[str] = mapped_column(String(64))
    gateway_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # none, one or several, as Neutron's (core/network/allocation_pools.py checks them)
    allocation_pools: Mapped[list[AllocationPool]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", passive_deletes=True)
    enable_dhcp: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Timestamp)
    updated_at: Mapped[float] = mapped_column(Timestamp)
    revision_number: Mapped[int] = mapped_column(Integer, default=0)  # +1 per update


class AllocationPool(NetworkTable):
    """One range a subnet hands addresses out of (Neutron's ``ipallocationpools``);
    a subnet's pools never overlap, so a pool's first address identifies it."""

    __tablename__ = "subnet_allocation_pools"
    subnet_id: Mapped[str] = mapped_column(ForeignKey("subnets.id", ondelete="CASCADE"),
                                           primary_key=True)
    first_ip: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_ip: Mapped[str] = mapped_column(String(64))


class Port(NetworkTable):
    __tablename__ = "ports"
    __table_args__ = (UniqueConstraint("network_id", "mac_address", name="uq_ports_mac"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    name: Mapped[str] = mapped_column(String(255), default="")
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id"), index=True)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    mac_address: Mapped[str] = mapped_column(String(32))
    device_id: Mapped[str] = mapped_column(String(255), default="", index=True)
    device_owner: Mapped[str] = mapped_column(String(255), default="")
    host_id: Mapped[str] = mapped_column(String(255), default="")
    status: Mapped[str] = mapped_column(String(16), default="DOWN")
    admin_state_up: Mapped[bool] = mapped_column(Boolean, default=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Timestamp)
    updated_at: Mapped[float] = mapped_column(Timestamp)


class IPAllocation(NetworkTable):
    """One address of one subnet held by one port. The primary key is what makes
    handing out an address twice impossible, whichever API process or Galera
    node tries: the second insert fails (or loses certification) and retries."""

    __tablename__ = "ip_allocations"
    subnet_id: Mapped[str] = mapped_column(ForeignKey("subnets.id", ondelete="CASCADE"),
                                           primary_key=True)
    ip_address: Mapped[str] = mapped_column(String(64), primary_key=True)
    port_id: Mapped[str] = mapped_column(ForeignKey("ports.id", ondelete="CASCADE"),
                                         index=True)
