"""Neutron's JSON shapes of Haven's networks, subnets and ports."""

from __future__ import annotations

import ipaddress
from typing import Any

from core.common.timeutil import iso
from core.network.models import Network, Port, Subnet


def network_view(n: Network, subnets: list[str]) -> dict[str, Any]:
    return {
        "id": n.id, "name": n.name, "tenant_id": n.project_id or "",
        "project_id": n.project_id or "", "status": "ACTIVE",
        "admin_state_up": n.admin_state_up, "shared": n.shared, "router:external": n.external,
        "subnets": subnets, "mtu": n.mtu, "provider:network_type": n.network_type,
        "provider:physical_network": n.physical_network, "provider:segmentation_id": None,
        "availability_zones": [], "availability_zone_hints": [], "description": n.description,
        "port_security_enabled": True, "ipv4_address_scope": None, "ipv6_address_scope": None,
        "is_default": False, "tags": [], "revision_number": 0,
        "created_at": iso(n.created_at), "updated_at": iso(n.updated_at),
    }


def subnet_view(s: Subnet) -> dict[str, Any]:
    return {
        "id": s.id, "name": s.name, "network_id": s.network_id,
        "tenant_id": s.project_id or "", "project_id": s.project_id or "", "ip_version": 4,
        "cidr": s.cidr, "gateway_ip": s.gateway_ip,
        "allocation_pools": [{"start": p.first_ip, "end": p.last_ip} for p in sorted(
            s.allocation_pools, key=lambda p: int(ipaddress.IPv4Address(p.first_ip)))],
        "enable_dhcp": s.enable_dhcp, "dns_nameservers": [], "host_routes": [],
        "description": s.description, "subnetpool_id": None, "ipv6_ra_mode": None,
        "ipv6_address_mode": None, "service_types": [], "tags": [],
        "revision_number": s.revision_number or 0,
        "created_at": iso(s.created_at), "updated_at": iso(s.updated_at),
    }


def port_view(p: Port, fixed_ips: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "id": p.id, "name": p.name, "network_id": p.network_id,
        "tenant_id": p.project_id or "", "project_id": p.project_id or "",
        "mac_address": p.mac_address, "fixed_ips": fixed_ips, "device_id": p.device_id,
        "device_owner": p.device_owner, "status": p.status, "admin_state_up": p.admin_state_up,
        "binding:host_id": p.host_id, "binding:vif_type": "tap" if p.host_id else "unbound",
        "binding:vnic_type": "normal", "binding:profile": {}, "binding:vif_details": {},
        "security_groups": [], "allowed_address_pairs": [], "extra_dhcp_opts": [],
        "port_security_enabled": False, "description": p.description, "tags": [],
        "revision_number": 0, "created_at": iso(p.created_at), "updated_at": iso(p.updated_at),
    }
