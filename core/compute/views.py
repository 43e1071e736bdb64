"""Nova v2.1 JSON shapes of Haven's compute objects."""

from __future__ import annotations

import hashlib
from typing import Any

from core.common.timeutil import iso, iso_us
from core.compute import states
from core.compute.models import ComputeService, Flavor, Instance, ServerGroup


def link(base: str, kind: str, obj_id: str) -> list[dict[str, str]]:
    return [{"rel": "self", "href": f"{base}/v2.1/{kind}/{obj_id}"},
            {"rel": "bookmark", "href": f"{base}/{kind}/{obj_id}"}]


def host_id(project_id: str, host: str | None) -> str:
    """Nova's opaque per-project host id: equal for a project's servers on one host."""
    if not host:
        return ""
    return hashlib.sha224((project_id + host).encode()).hexdigest()


def server_brief(base: str, inst: Instance) -> dict[str, Any]:
    return {"id": inst.id, "name": inst.name, "links": link(base, "servers", inst.id)}


def server_detail(base: str, inst: Instance, metadata: dict[str, str], network_name: str | None,
                  admin: bool, host_up: bool | None,
                  version: tuple[int, int] = (2, 1),
                  security_groups: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """Nova's server view; ``security_groups`` are its port's (the key is left out
    when None: no port, or the network service could not say, as Nova)."""
    addresses: dict[str, list[dict[str, Any]]] = {}
    if inst.fixed_ip:
        addresses[network_name or "network"] = [{
            "version": 4, "addr": inst.fixed_ip, "OS-EXT-IPS:type": "fixed",
            "OS-EXT-IPS-MAC:mac_addr": inst.mac_address}]
    view: dict[str, Any] = {
        "id": inst.id, "name": inst.name,
        "status": states.api_status(inst.vm_state, inst.task_state),
        "tenant_id": inst.project_id, "user_id": inst.user_id, "metadata": metadata,
        "hostId": host_id(inst.project_id, inst.host),
        "image": {"id": inst.image_id, "links": [{"rel": "bookmark",
                                                  "href": f"{base}/images/{inst.image_id}"}]},
        "flavor": {"id": inst.flavor_id, "links": [{"rel": "bookmark",
                                                    "href": f"{base}/flavors/{inst.flavor_id}"}]},
        "created": iso(inst.created_at), "updated": iso(inst.updated_at),
        "addresses": addresses, "accessIPv4": "", "accessIPv6": "",
        "links": link(base, "servers", inst.id), "OS-DCF:diskConfig": "MANUAL",
        "progress": 100 if inst.vm_state == states.ACTIVE else 0,
        "OS-EXT-AZ:availability_zone": "nova", "key_name": inst.key_name,
        "config_drive": "True" if inst.config_drive else "",
        "OS-SRV-USG:launched_at": iso_us(inst.launched_at),
        "OS-SRV-USG:terminated_at": iso_us(inst.deleted_at),
        "OS-EXT-STS:task_state": inst.task_state, "OS-EXT-STS:vm_state": inst.vm_state,
        "OS-EXT-STS:power_state": inst.power_state,
        "os-extended-volumes:volumes_attached": [],
        "locked": False, "description": None,
    }
    if security_groups is not None:
        view["security_groups"] = security_groups
    if inst.vm_state == states.ERROR and inst.fault:
        view["fault"] = {"code": 500, "message": inst.fault, "created": iso(inst.updated_at)}
    if admin:
        view["OS-EXT-SRV-ATTR:host"] = inst.host
        view["OS-EXT-SRV-ATTR:hypervisor_hostname"] = inst.host
        view["OS-EXT-SRV-ATTR:instance_name"] = f"haven-{inst.id}"
        view["host_status"] = "" if host_up is None else ("UP" if host_up else "DOWN")
        if version >= (2, 3):  # Nova's extended attributes of 2.3: the user data, base64
            view["OS-EXT-SRV-ATTR:user_data"] = inst.user_data
    return view


def flavor_view(base: str, f: Flavor) -> dict[str, Any]:
    return {"id": f.id, "name": f.name, "ram": f.ram_mb, "disk": f.disk_gb, "vcpus": f.vcpus,
            "links": link(base, "flavors", f.id), "OS-FLV-EXT-DATA:ephemeral": 0,
            "OS-FLV-DISABLED:disabled": False, "os-flavor-access:is_public": f.is_public,
            "swap": "", "rxtx_factor": 1.0, "description": f.description}


def service_view(s: ComputeService, up: bool) -> dict[str, Any]:
    return {"id": s.id, "binary": "nova-compute", "host": s.host, "zone": "nova",
            "status": "enabled" if s.enabled else "disabled", "state": "up" if up else "down",
            "updated_at": iso_us(s.last_seen) if s.last_seen else None,
            "disabled_reason": s.disabled_reason, "forced_down": s.forced_down}


def hypervisor_view(s: ComputeService, up: bool, running_vms: int, detail: bool
                    ) -> dict[str, Any]:
    view: dict[str, Any] = {"id": s.id, "hypervisor_hostname": s.host,
                            "state": "up" if up else "down",
                            "status": "enabled" if s.enabled else "disabled"}
    if detail:
        view.update({
            "vcpus": s.vcpus, "memory_mb": s.memory_mb, "local_gb": s.disk_gb,
            "vcpus_used": s.vcpus_used, "memory_mb_used": s.memory_mb_used,
            "local_gb_used": s.disk_gb_used, "hypervisor_type": s.hypervisor_type,
            "hypervisor_version": 7002000, "running_vms": running_vms,
            "free_ram_mb": s.memory_mb - s.memory_mb_used,
            "free_disk_gb": s.disk_gb - s.disk_gb_used, "current_workload": 0,
            "disk_available_least": s.disk_gb - s.disk_gb_used, "host_ip": s.host_ip,
            "service": {"host": s.host, "id": s.id, "disabled_reason": s.disabled_reason},
            "cpu_info": "{}",
        })
    return view


def group_view(g: ServerGroup, members: list[str]) -> dict[str, Any]:
    return {"id": g.id, "name": g.name, "policies": [g.policy], "members": members,
            "metadata": {}, "project_id": g.project_id, "user_id": g.user_id}
