"""Tables of network segments (Neutron's ml2 ``networksegments`` and type allocations).

One segment per network. The unique key on (type, physical network, segmentation
id) is what makes handing out a VNI, a VLAN id or a flat physical network twice
impossible, whichever API process or Galera node tries: the second insert fails
and the allocator tries another id. Absent values are stored as ``""`` and ``0``
(not NULL), because a unique key does not compare NULLs. Deleting the network
deletes its segment (ON DELETE CASCADE), which frees the id.
"""

from __future__ import annotations

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.network.models import NetworkTable


class NetworkSegment(NetworkTable):
    __tablename__ = "network_segments"
    __table_args__ = (UniqueConstraint("network_type", "physical_network", "segmentation_id",
                                       name="uq_network_segments_allocation"),)
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id", ondelete="CASCADE"),
                                            primary_key=True)
    network_type: Mapped[str] = mapped_column(String(16))
    physical_network: Mapped[str] = mapped_column(String(64), default="")  # "" for vxlan
    segmentation_id: Mapped[int] = mapped_column(Integer, default=0)  # 0 for flat


class HostVtep(NetworkTable):
    """The VXLAN tunnel endpoint (underlay address) of each hypervisor, registered by
    its agent: where the other hypervisors send the frames for its ports."""

    __tablename__ = "host_vteps"
    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    address: Mapped[str] = mapped_column(String(64))
