"""Routers, their ports and floating IPs (Neutron's L3 model).

Which ports belong to a router is recorded here (``router_ports``), not read from
a port's ``device_id``/``device_owner``: those a port's owner may edit, so they
cannot say which router a port serves. A router's gateway is its one router port
of type ``network:router_gateway``; its interfaces are those of type
``network:router_interface``.

A floating IP holds its address through a port of its own on the external
network (``floating_port_id``, device owner ``network:floatingip``, no project):
IPAM's unique key on the address is then what keeps two floating IPs, or a
floating IP and a router gateway, from sharing an address.

``revision_number`` of a router is bumped by every change that touches it,
before that change reads anything (:func:`core.network.l3.lock_router`): that
write is what queues two transactions about one router (an association and the
removal of the interface it needs) one behind the other, on InnoDB, Galera and
SQLite alike.
"""

from __future__ import annotations

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.common.db import Timestamp
from core.network.models import NetworkTable, new_uuid

GATEWAY = "network:router_gateway"
INTERFACE = "network:router_interface"
FLOATING = "network:floatingip"


class Router(NetworkTable):
    __tablename__ = "routers"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    name: Mapped[str] = mapped_column(String(255), default="")
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    admin_state_up: Mapped[bool] = mapped_column(Boolean, default=True)
    enable_snat: Mapped[bool] = mapped_column(Boolean, default=True)
    description: Mapped[str] = mapped_column(Text, default="")
    revision_number: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Timestamp)
    updated_at: Mapped[float] = mapped_column(Timestamp)


class RouterPort(NetworkTable):
    """One port of one router: its gateway or one of its interfaces."""

    __tablename__ = "router_ports"
    port_id: Mapped[str] = mapped_column(ForeignKey("ports.id", ondelete="CASCADE"),
                                         primary_key=True)
    router_id: Mapped[str] = mapped_column(ForeignKey("routers.id"), index=True)
    port_type: Mapped[str] = mapped_column(String(255))


class FloatingIP(NetworkTable):
    __tablename__ = "floating_ips"
    __table_args__ = (UniqueConstraint("floating_network_id", "fixed_port_id",
                                       "fixed_ip_address", name="uq_floating_ips_fixed"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    floating_ip_address: Mapped[str] = mapped_column(String(64))
    floating_network_id: Mapped[str] = mapped_column(ForeignKey("networks.id"), index=True)
    floating_port_id: Mapped[str] = mapped_column(ForeignKey("ports.id"), unique=True)
    fixed_port_id: Mapped[str | None] = mapped_column(
        ForeignKey("ports.id", ondelete="SET NULL"), nullable=True, index=True)
    fixed_ip_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    router_id: Mapped[str | None] = mapped_column(ForeignKey("routers.id"), nullable=True,
                                                  index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Timestamp)
    updated_at: Mapped[float] = mapped_column(Timestamp)
