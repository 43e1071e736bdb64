"""A hypervisor's desired data path, read from the database.

Its ports are those bound to it (``binding:host_id``) and up; its networks, those
ports' networks with their segments; on a VXLAN network the ports bound to other
hosts are reached at those hosts' VTEPs, which each agent registers
(:func:`register_vtep`). A network without a segment (made before segments
existed and not adopted) is not carried: nothing would say what isolates it.
A port on a host that has registered no VTEP is left out (logged): frames for it
would have nowhere to go.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.common.hostnet import tap_name
from core.network.agent.driver import HostState, LocalPort, NetworkSpec, RemotePort
from core.network.models import Network, Port
from core.network.segment_models import HostVtep, NetworkSegment

LOG = logging.getLogger(__name__)


def register_vtep(session: Session, host: str, address: str) -> None:
    """Record (or move) ``host``'s tunnel endpoint; idempotent."""
    row = session.get(HostVtep, host)
    if row is None:
        session.add(HostVtep(host=host, address=address))
    else:
        row.address = address
    session.flush()


def desired_state(session: Session, host: str) -> HostState:
    """What ``host``'s data path must carry, as the database says now."""
    mine = list(session.scalars(select(Port).where(Port.host_id == host,
                                                   Port.admin_state_up.is_(True))
                                .order_by(Port.id)))
    net_ids = sorted({p.network_id for p in mine})
    rows = session.execute(select(Network, NetworkSegment).join(
        NetworkSegment, NetworkSegment.network_id == Network.id).where(
        Network.id.in_(net_ids))).all()
    networks = {n.id: NetworkSpec(n.id, seg.network_type, seg.physical_network or None,
                                  seg.segmentation_id or None, n.mtu) for n, seg in rows}
    for missing in set(net_ids) - set(networks):
        LOG.warning("network %s has no segment: its ports on %s stay unplugged",
                    missing, host)
    ports = tuple(LocalPort(p.id, p.network_id, p.mac_address.lower(), tap_name(p.id),
                            p.device_id if p.device_owner.startswith("compute:") else "")
                  for p in mine if p.network_id in networks)
    tunnelled = [i for i, n in networks.items() if n.network_type == "vxlan"]
    remote: list[RemotePort] = []
    if tunnelled:
        vteps = {h.host: h.address for h in session.scalars(select(HostVtep))}
        others = session.scalars(select(Port).where(
            Port.network_id.in_(tunnelled), Port.host_id != host, Port.host_id != "",
            Port.admin_state_up.is_(True)).order_by(Port.id))
        for p in others:
            vtep = vteps.get(p.host_id)
            if vtep is None or vtep == vteps.get(host):
                LOG.warning("port %s on %s: no VTEP of that host", p.id, p.host_id)
                continue
            remote.append(RemotePort(p.network_id, p.mac_address.lower(), vtep))
    return HostState(host, tuple(networks[i] for i in sorted(networks)), ports,
                     tuple(remote))
