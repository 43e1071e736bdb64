"""The EC2-style half of the metadata (``<version>/meta-data/``, ``<version>/user-data``).

Mirrors Nova's ``get_ec2_metadata`` and ``ec2_md_print``: the same items,
introduced by the same API versions, and the same odd listing of
``public-keys/`` (``0=keyname``, whose directory ``0/`` holds ``openssh-key``),
which EC2 clients such as cloud-init's ``ec2`` helper parse.
"""

from __future__ import annotations

from typing import Any

from core.compute.metadata.model import InstanceDescription
from core.compute.metadata.versions import Versions

VERSIONS = ("1.0", "2007-01-19", "2007-03-01", "2007-08-29", "2007-10-10", "2007-12-15",
            "2008-02-01", "2008-09-01", "2009-04-04")
_TREE = Versions(VERSIONS)
resolve_version = _TREE.resolve
_at_least = _TREE.at_least


class Labelled(dict[str, Any]):
    """A directory listed under another name in its parent (``0=keyname``)."""

    def __init__(self, label: str, items: dict[str, Any]) -> None:
        super().__init__(items)
        self.label = label


def block_device_mapping(desc: InstanceDescription) -> dict[str, str]:
    """Nova's ``instance_block_mapping`` for an image-backed root disk."""
    root = desc.root_device_name
    return {"ami": root.removeprefix("/dev/"), "root": root}


def meta_data(desc: InstanceDescription, version: str) -> dict[str, Any]:
    """The ``meta-data`` tree for ``version`` (already resolved): directories are dicts,
    leaves strings (or lists, listed one per line)."""
    fixed = [ip for port in desc.ports for ip in port.fixed_ips if ip.subnet.version == 4]
    floating = [ip.floating_ip for ip in fixed if ip.floating_ip]
    md: dict[str, Any] = {
        "ami-id": desc.ec2_ami_id,
        "ami-launch-index": desc.launch_index,
        "ami-manifest-path": "FIXME",  # sic: what Nova answers
        "instance-id": desc.ec2_instance_id,
        "hostname": desc.hostname,
        "local-ipv4": fixed[0].ip_address if fixed else "",
        "reservation-id": desc.reservation_id,
        "security-groups": list(desc.security_groups),
    }
    if desc.keypairs:
        md["public-keys"] = {
            str(i): Labelled(f"{i}={k.name}", {"openssh-key": k.public_key})
            for i, k in enumerate(desc.keypairs)
        }
    if _at_least("2007-01-19", version):
        md["local-hostname"] = desc.hostname
        md["public-hostname"] = desc.hostname
        md["public-ipv4"] = floating[0] if floating else ""
    if _at_least("2007-08-29", version):
        md["instance-type"] = desc.flavor_name
    if _at_least("2007-12-15", version):
        md["block-device-mapping"] = block_device_mapping(desc)
    if _at_least("2008-02-01", version):
        md["placement"] = {"availability-zone": desc.availability_zone}
    if _at_least("2008-09-01", version):
        md["instance-action"] = "none"
    return md


def tree(desc: InstanceDescription, version: str) -> dict[str, Any]:
    """``<version>/``: ``meta-data`` and, if the instance has any, ``user-data``."""
    out: dict[str, Any] = {"meta-data": meta_data(desc, resolve_version(version))}
    if desc.user_data is not None:
        out["user-data"] = desc.user_data
    return out


def as_json(node: Any) -> Any:
    """A tree as plain JSON (the config drive's ``ec2/<version>/meta-data.json``)."""
    if isinstance(node, dict):
        return {k: as_json(v) for k, v in node.items()}
    return node


def listing(node: Any) -> bytes:
    """A node as Nova prints it: a directory one entry a line (``name/`` for a
    subdirectory, its label for a labelled one), sorted; a list one item a line."""
    if isinstance(node, dict):
        lines = []
        for key in sorted(node):
            child = node[key]
            if isinstance(child, Labelled):
                lines.append(child.label)
            elif isinstance(child, dict):
                lines.append(key + "/")
            else:
                lines.append(key)
        return "\n".join(lines).encode()
    if isinstance(node, list):
        return "\n".join(str(x) for x in node).encode()
    if isinstance(node, bytes):
        return node
    return str(node).encode()
