"""The network API's policy: Neutron's default policies on Haven's three roles.

As in ``neutron/conf/policies/{network,subnet,port}.py``: a project's readers
see its networks, subnets and ports (and everyone scoped sees shared and
external networks); its members create, change and delete them; sharing a
network, making it external and choosing provider attributes is for
administrators. On a network the caller does not own (the shared provider
network) a port may not pick its addresses, its MAC or a ``network:*`` device
owner: Neutron's ``admin_or_network_owner`` rules, because on a shared segment
those let one tenant impersonate another or the router. Nobody but an
administrator takes a subnet's gateway or an address outside its allocation
pools by hand. Unscoped tokens carry no roles, so every rule below refuses them.

Targets: network rules see the network (``project_id``, ``shared``,
``external``); subnet and port rules see the resource's ``project_id`` and the
owning network's as ``network_project_id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.common.auth import AuthContext
from core.common.policy import Rule, admin, any_of, member_of_project, reader_of_project


def scoped_member(ctx: AuthContext, _target: Mapping[str, Any]) -> bool:
    """A member of the project its token is scoped to (creates land in that project)."""
    return "member" in ctx.roles and ctx.project_id is not None


def scoped_reader(ctx: AuthContext, _target: Mapping[str, Any]) -> bool:
    return "reader" in ctx.roles and ctx.project_id is not None


def shared_or_external(ctx: AuthContext, target: Mapping[str, Any]) -> bool:
    """Neutron's ``shared:True or external:True`` read rule, for scoped callers."""
    return scoped_reader(ctx, target) and bool(target.get("shared") or target.get("external"))


def network_owner_member(ctx: AuthContext, target: Mapping[str, Any]) -> bool:
    """A member of the project that owns the port's or subnet's network."""
    return member_of_project(ctx, {"project_id": target.get("network_project_id")})


def network_owner_reader(ctx: AuthContext, target: Mapping[str, Any]) -> bool:
    return reader_of_project(ctx, {"project_id": target.get("network_project_id")})


ADMIN_OR_NET_OWNER = any_of(admin, network_owner_member)

RULES: dict[str, Rule] = {
    # networks
    "network:get_network": any_of(admin, reader_of_project, shared_or_external),
    "network:create_network": scoped_member,
    "network:create_network:shared": admin,
    "network:create_network:router:external": admin,
    "network:create_network:provider": admin,
    "network:update_network:provider": admin,
    "network:get_network:provider": admin,  # non-admins do not see provider:* at all
    "network:update_network": any_of(admin, member_of_project),
    "network:update_network:shared": admin,
    "network:delete_network": any_of(admin, member_of_project),
    # subnets: a subnet of a shared network is visible to all; only the network's
    # owner adds or removes them (Neutron's ADMIN_OR_NET_OWNER_MEMBER)
    "network:get_subnet": any_of(admin, reader_of_project, network_owner_reader,
                                 shared_or_external),
    "network:create_subnet": ADMIN_OR_NET_OWNER,
    "network:update_subnet": ADMIN_OR_NET_OWNER,  # Neutron's ADMIN_OR_NET_OWNER_MEMBER
    "network:delete_subnet": any_of(admin, member_of_project, network_owner_member),
    # ports
    "network:get_port": any_of(admin, reader_of_project),
    "network:create_port": scoped_member,
    "network:create_port:fixed_ips:ip_address": ADMIN_OR_NET_OWNER,
    "network:create_port:fixed_ips:reserved": admin,  # the gateway, or outside the pools
    "network:create_port:mac_address": ADMIN_OR_NET_OWNER,
    "network:create_port:device_owner": ADMIN_OR_NET_OWNER,  # only for network:* owners
    "network:create_port:binding:host_id": admin,
    "network:update_port": any_of(admin, member_of_project),
    "network:update_port:device_owner": ADMIN_OR_NET_OWNER,  # only for network:* owners
    "network:update_port:binding:host_id": admin,
    "network:update_port:status": admin,
    "network:get_port:binding": admin,  # binding:host_id, vif_type, vif_details, profile
    # port security off lets a port send from any address: the network's owner decides
    "network:create_port:port_security_enabled": ADMIN_OR_NET_OWNER,
    "network:update_port:port_security_enabled": ADMIN_OR_NET_OWNER,
    "network:delete_port": any_of(admin, member_of_project),
}


def privileged_device_owner(owner: str) -> bool:
    """Neutron's ``not:device_owner:network:*`` rule: router, DHCP and similar ports."""
    return owner.startswith("network:")
