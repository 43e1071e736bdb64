"""A tenant on the lab's stack, driven by the stock ``openstack`` CLI: a key, a network
behind a router to the provider network, SSH allowed, VMs with the key and user data,
floating IPs; OpenSSH from outside the cloud (the switch namespace, on the provider
network) to them. Shared by the stack test (tests/lab/test_stack.py) and the
guest-networking benchmarks (tests/bench/guest_network.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from core.network.routerns import shards
from ha.lab.commands import wait_until
from tests.lab.labtools import StackLab

L3_SHARDS = 2  # what `haven lab stack --networking` plans (ha/lab/stack.py)


class Tenant:
    """VMs on a tenant network behind a router, each reachable at a floating IP, with
    an injected key and user data: the way a tenant reaches a pet VM.

    ``build`` makes the network and one VM, ``vm1`` (the stack test's walk-through);
    ``network``, ``server`` and ``floating_ip`` make the same piece by piece, for
    several VMs. Calls that take ``fip`` default to ``vm1``'s (``self.fip``)."""

    def __init__(self, lab: StackLab, tmp: Path) -> None:
        self.lab, self.key, self.known = lab, tmp / "id_ed25519", tmp / "known_hosts"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)],
                       check=True)
        self.token = os.urandom(8).hex()
        self.user_data = tmp / "init.sh"
        self.user_data.write_text(f"#!/bin/sh\necho {self.token} > /root/proof\n")
        self.fip = ""
        self.host_keys: dict[str, str] = {}  # floating IP -> its guest's host key line

    def network(self) -> None:
        """Key ``k1``, network ``net1`` (10.0.0.0/24), router ``r1`` to ``provider``,
        SSH allowed by the project's default security group."""
        os_ = self.lab.openstack
        os_("keypair", "create", "--public-key", f"{self.key}.pub", "k1")
        os_("network", "create", "net1")
        os_("subnet", "create", "--network", "net1", "--subnet-range", "10.0.0.0/24", "sub1")
        os_("router", "create", "r1")
        os_("router", "set", "--external-gateway", "provider", "r1")
        os_("router", "add", "subnet", "r1", "sub1")
        # the lab's client is the admin, who sees every project's "default" group (as in
        # Neutron, the name alone is ambiguous for an admin): its own project's, by id
        admin = os_("project", "show", "admin", "-f", "value", "-c", "id").strip()
        [default] = [g["ID"] for g in json.loads(os_("security", "group", "list", "-f", "json"))
                     if g["Name"] == "default" and g["Project"] == admin]
        os_("security", "group", "rule", "create", "--protocol", "tcp", "--dst-port", "22",
            default)

    def server(self, image: str, name: str, *extra: str) -> dict[str, str]:
        """``name`` on ``net1`` with the key and the user data, waited ACTIVE."""
        server = json.loads(self.lab.openstack(
            "server", "create", "--image", image, "--flavor", "m1.tiny", "--network", "net1",
            "--key-name", "k1", "--user-data", str(self.user_data), *extra, "--wait", name,
            "-f", "json", timeout=240))
        assert server["status"] == "ACTIVE", server
        return dict(server)

    def floating_ip(self, name: str) -> str:
        """A new floating IP on the provider network, added to server ``name``."""
        fip = self.lab.openstack("floating", "ip", "create", "provider", "-f", "value", "-c",
                                 "floating_ip_address").strip()
        self.lab.openstack("server", "add", "floating", "ip", name, fip)
        return fip

    def build(self, image: str) -> dict[str, str]:
        self.network()
        server = self.server(image, "vm1")
        self.fip = self.floating_ip("vm1")
        return server

    def trust_host_key(self, seen: int = 0, name: str = "vm1", fip: str | None = None) -> int:
        """known_hosts from the newest HAVEN-TINY-HOSTKEY console line of ``name``, as a
        careful user does, once the console shows more than ``seen`` of them (the
        guest's root is a RAM disk: every boot makes a new host key). Returns how many
        it saw."""
        found: list[str] = []

        def printed() -> bool:
            log = self.lab.openstack("console", "log", "show", name)
            found[:] = [ln.split(" ", 1)[1].strip() for ln in log.splitlines()
                        if ln.startswith("HAVEN-TINY-HOSTKEY ")]
            return len(found) > seen
        wait_until(printed, 300, f"{name}'s host key on its console", interval=3)
        self.host_keys[fip or self.fip] = found[-1]
        self.known.write_text("".join(f"{ip} {key}\n" for ip, key in self.host_keys.items()))
        return len(found)

    def ssh(self, command: str, fip: str | None = None, timeout: float = 60.0,
            ) -> subprocess.CompletedProcess[str]:
        """OpenSSH from the outside (the switch namespace, on the provider network) to
        the floating IP, with the tenant's key, trusting only the console's host key."""
        return self.lab.client(
            "ssh", "-i", str(self.key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={self.known}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", f"root@{fip or self.fip}",
            command, timeout=timeout, check=False)

    def wait_reachable(self, timeout: float, what: str, fip: str | None = None) -> list[str]:
        """Wait until SSH at the floating IP works; the guest's fixed address, the user
        data's proof and its hostname, as it answers."""
        answer: list[str] = []

        def logged_in() -> bool:
            done = self.ssh(r"ip -4 addr show eth0 | sed -n 's/.*inet \([0-9.]*\).*/\1/p'; "
                            "cat /root/proof; hostname", fip)
            answer[:] = done.stdout.split() if done.returncode == 0 else []
            return bool(answer)
        wait_until(logged_in, timeout, what, interval=1)
        return answer


def shard_resource(router_id: str) -> str:
    """The Pacemaker resource of the router's shard."""
    return f"haven-l3-{shards.shard_of(router_id, L3_SHARDS)}"


def shard_node(lab: StackLab, router_id: str) -> str:
    view = lab.view()
    assert view is not None
    [where] = view.running_on(shard_resource(router_id))
    return str(where)
