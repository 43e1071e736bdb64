"""Security groups, their rules, and which ports they guard (Neutron's tables, Haven's way).

``default_security_groups`` has one row per project, its primary key the project: two
requests that both find a project without its ``default`` group (a group list and a
port create at once, on two API nodes) cannot both make one; the loser's insert fails
and it reads the winner's (see :func:`core.network.security_groups.ensure_default`).

A port's groups are rows of ``security_group_port_bindings``; ``port_security`` holds
the port's ``port_security_enabled`` (a port without a row has it on, Neutron's
default). Both go with their port (``ON DELETE CASCADE``); a group still bound to a
port is refused deletion by the API (409), and the foreign key backs that up.
"""

from __future__ import annotations

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.common.db import Timestamp
from core.network.models import NetworkTable, new_uuid


class SecurityGroup(NetworkTable):
    __tablename__ = "security_groups"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    name: Mapped[str] = mapped_column(String(255), default="", index=True)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    stateful: Mapped[bool] = mapped_column(Boolean, default=True)
    revision_number: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Timestamp)
    updated_at: Mapped[float] = mapped_column(Timestamp)


class SecurityGroupRule(NetworkTable):
    """One rule. ``protocol`` is what the client sent (a name or a number, Neutron
    shows it back as given); ``remote_ip_prefix`` likewise, its network address is
    shown as ``normalized_cidr``."""

    __tablename__ = "security_group_rules"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    security_group_id: Mapped[str] = mapped_column(
        ForeignKey("security_groups.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    direction: Mapped[str] = mapped_column(String(16))
    ethertype: Mapped[str] = mapped_column(String(8))
    protocol: Mapped[str | None] = mapped_column(String(40), nullable=True)
    port_range_min: Mapped[int | None] = mapped_column(Integer, nullable=True)
    port_range_max: Mapped[int | None] = mapped_column(Integer, nullable=True)
    remote_ip_prefix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    remote_group_id: Mapped[str | None] = mapped_column(
        ForeignKey("security_groups.id", ondelete="CASCADE"), nullable=True, index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Timestamp)
    updated_at: Mapped[float] = mapped_column(Timestamp)


class DefaultSecurityGroup(NetworkTable):
    __tablename__ = "default_security_groups"
    project_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    security_group_id: Mapped[str] = mapped_column(
        ForeignKey("security_groups.id", ondelete="CASCADE"))


class PortSecurityGroup(NetworkTable):
    __tablename__ = "security_group_port_bindings"
    port_id: Mapped[str] = mapped_column(ForeignKey("ports.id", ondelete="CASCADE"),
                                         primary_key=True)
    security_group_id: Mapped[str] = mapped_column(ForeignKey("security_groups.id"),
                                                   primary_key=True, index=True)


class PortSecurity(NetworkTable):
    __tablename__ = "port_security"
    port_id: Mapped[str] = mapped_column(ForeignKey("ports.id", ondelete="CASCADE"),
                                         primary_key=True)
    port_security_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
