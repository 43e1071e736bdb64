"""The shared provider network bootstrap makes (idempotent)."""

from __future__ import annotations

import ipaddress

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.common.config import HavenConfig
from core.network import segments
from core.network.models import Network
from core.network.networks import PROVIDER_PHYSNET, create_network_row
from core.network.subnets import create_subnet_row


def ensure_provider_network(session: Session, cfg: HavenConfig, admin_project_id: str,
                            dhcp: bool = False) -> Network:
    """The shared external network ``network.provider_name`` with its subnet; ``dhcp``
    says whether a subnet made now has DHCP (the all-in-one serves it; a cluster's
    provider network usually has its own). An existing subnet is left as it is: an
    operator's ``subnet set`` outlives restarts."""
    name = cfg.network.provider_name
    net = session.scalars(select(Network).where(Network.name == name,
                                                Network.shared.is_(True))).first()
    if net is None:
        net = create_network_row(session, name, admin_project_id, shared=True, external=True)
        cidr = cfg.network.provider_cidr
        gateway = str(next(ipaddress.ip_network(cidr).hosts()))
        create_subnet_row(session, net, f"{name}-subnet", cidr, gateway, admin_project_id,
                          enable_dhcp=dhcp)
    policy = segments.parse(cfg.network.segments)
    if segments.segment_of(session, net.id) is None:  # new, or made before segments
        wanted = segments.validate(policy, segments.SegmentRequest(
            "flat", net.physical_network or PROVIDER_PHYSNET))
        segments.allocate(session, policy, net.id, wanted)
    segments.adopt_unsegmented(session, policy)  # the provider's physical network first
    return net
