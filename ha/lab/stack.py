"""The whole Haven stack on a running lab (``haven lab stack``).

What an operator does on real machines, done for the lab's nodes:

1. a cluster plan (every lab node a controller; hypervisors too when the lab
   runs libvirt), shared secrets, one Fernet key repository;
2. ``haven cluster node-config`` for each node (into its private directories);
3. ``haven cluster bootstrap`` inside the first node: fencing (the lab's devices
   are kept), Galera, RabbitMQ, the schema, the Haven services, the VIP.

Clients reach the VIP from the switch namespace, where the bridge gets the lab's
client address (``client_argv``); the root namespace has no route into the lab.
The plan, secrets, admin password, bootstrap script and a clouds.yaml for
the client are kept in ``LAB_DIR/stack``.
"""

from __future__ import annotations

import ipaddress
import secrets
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.common.config import NetworkConfig
from core.common.files import write_private
from core.network.networks import PROVIDER_PHYSNET
from ha.bootstrap.cib import ClusterPlan
from ha.bootstrap.nodeconf import API_PORTS, Secrets, write_node_files
from ha.bootstrap.tls import CA_CERT, load_or_create_ca
from ha.lab import config, node, state
from ha.lab.commands import LabError, run
from ha.lab.network import EXT_BRIDGE, EXT_IFNAME, NODE_IFNAME

VIP_HOST = 100  # .100 of the lab subnet
CLIENT_HOST = 2  # the bridge's address: where lab clients run from
HAVEN_BINARY = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "haven"
CLOUD = "haven-lab"
ADMIN_PASSWORD_FILE = "/var/lib/haven/admin-password"  # where `haven bootstrap` reads it


@dataclass(frozen=True)
class StackPaths:
    root: Path

    @property
    def plan(self) -> Path:
        return self.root / "plan.yaml"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets.yaml"

    @property
    def admin_password(self) -> Path:
        return self.root / "admin-password"

    @property
    def script(self) -> Path:
        return self.root / "cluster-bootstrap.sh"

    @property
    def clouds_yaml(self) -> Path:
        return self.root / "clouds.yaml"

    @property
    def ca(self) -> Path:
        """The cluster CA (ca.crt is what clients verify the APIs with)."""
        return self.root / "ca"

    @property
    def fernet_keys(self) -> Path:
        return self.root / "fernet-keys"

    @property
    def shared(self) -> Path:
        return self.root / "shared"


def paths(lab_dir: Path) -> StackPaths:
    return StackPaths(lab_dir / "stack")


def host_address(subnet: str, host: int) -> str:
    return str(ipaddress.IPv4Network(subnet)[host])


def vip_address(st: state.LabState) -> str:
    return host_address(st.subnet, VIP_HOST)


def lab_plan(st: state.LabState, shared_dir: Path,
             compute_overrides: Mapping[str, Any] | None = None,
             networking: bool = False) -> ClusterPlan:
    """Every node is a controller; with libvirt, every node is a hypervisor too.
    Lean settings: one gunicorn worker per API, a small InnoDB buffer pool.
    ``compute_overrides`` replace the lab's compute settings below (a benchmark that
    must treat Haven's guests as it treats another's sets ``guest_nice``).
    ``networking``: tenant networks, DHCP, security groups, routers and floating IPs
    (the network agent on every node, two router shards, the provider network on each
    node's second cable); without it guests are not waited for, their taps plugged
    into nothing."""
    names = tuple(st.nodes)
    prefix = config.prefix_length(st.subnet)
    return ClusterPlan(
        nodes=names, vip=f"{vip_address(st)}/{prefix}", vip_nic=NODE_IFNAME,
        haven_config="/etc/haven/haven.yaml", fence_agent=config.FENCE_AGENT,
        fence_options={n: {"plug": n, "socket": str(st.socket_path)} for n in names},
        hypervisors=names if st.libvirt else (),
        addresses={n: nd.address for n, nd in st.nodes.items()},
        cluster_name="haven-lab", db_buffer_pool="64M", shared_dir=str(shared_dir),
        api_workers=1,
        l3_shards=2 if networking else 0, network_agents=networking,
        physical_interfaces={PROVIDER_PHYSNET: EXT_IFNAME} if networking else {},
        # A lab node reports the whole machine; keep hypervisors honest and small.
        # Guests are niced to the lowest priority: twenty TCG guests booting after an
        # evacuation (about 14 CPU-seconds in the first 13 s, measured with the bench's
        # --profile) otherwise starve libvirtd's start of the next ones, the agents and
        # Galera of the machine's two cores. At nice 10 their weights still summed to
        # twice libvirtd's; at 19 to a third.
        compute_overrides={"vcpus": 8, "memory_mb": 8192, "reserved_host_memory_mb": 0,
                           "heartbeat_interval": 2, "service_down_time": 10,
                           "reconcile_interval": 10, "guest_nice": 19,
                           **(compute_overrides or {})})


def outside_address() -> str:
    """The provider subnet's gateway (Haven's default provider CIDR), with its prefix:
    the lab's outside, which IPAM never hands out."""
    net = ipaddress.ip_network(NetworkConfig().provider_cidr)
    return f"{next(net.hosts())}/{net.prefixlen}"


def plan_yaml(plan: ClusterPlan) -> str:
    return yaml.safe_dump({
        "nodes": list(plan.nodes), "vip": plan.vip, "vip_nic": plan.vip_nic,
        "haven_config": plan.haven_config, "fence_agent": plan.fence_agent,
        "fence_options": plan.fence_options, "hypervisors": list(plan.hypervisors),
        "addresses": plan.addresses, "cluster_name": plan.cluster_name,
        "db_buffer_pool": plan.db_buffer_pool, "shared_dir": plan.shared_dir,
        "api_workers": plan.api_workers, "compute_overrides": plan.compute_overrides,
        "l3_shards": plan.l3_shards, "network_agents": plan.network_agents,
        "physical_interfaces": plan.physical_interfaces,
    }, sort_keys=False)


def auth_url(st: state.LabState) -> str:
    return f"https://{vip_address(st)}:{API_PORTS['identity']}/v3"


def clouds_yaml(auth: str, password: str, cacert: Path) -> str:
    return yaml.safe_dump({"clouds": {CLOUD: {
        "auth": {"auth_url": auth, "username": "admin",
                 "password": password, "project_name": "admin",
                 "user_domain_name": "Default", "project_domain_name": "Default"},
        "cacert": str(cacert),
        "region_name": "RegionOne", "identity_api_version": 3}}})


def client_argv(st: state.LabState, argv: Sequence[str]) -> list[str]:
    """Run ``argv`` as a lab client: in the switch namespace, which reaches the VIP."""
    return ["ip", "netns", "exec", st.switch_ns, *argv]


def client_env(lab_dir: Path) -> dict[str, str]:
    """Environment for the openstack CLI / openstacksdk as a lab client."""
    from ha.lab.commands import CLEAN_ENV

    return {"OS_CLIENT_CONFIG_FILE": str(paths(lab_dir).clouds_yaml), "OS_CLOUD": CLOUD,
            "PATH": f"{HAVEN_BINARY.parent}:{CLEAN_ENV['PATH']}"}


def _fernet_keys(target: Path) -> None:
    from core.common.tokens import KeyRepository

    KeyRepository(target, 3).setup()


def up_stack(lab_dir: Path, progress: Callable[[str], None] = lambda _m: None,
             timeout: float = 900.0, compute_overrides: Mapping[str, Any] | None = None,
             networking: bool = False) -> float:
    """Configure every node and bootstrap the cluster from the first; returns seconds.
    ``compute_overrides``, ``networking``: see ``lab_plan``."""
    t0 = time.monotonic()
    st = state.load(lab_dir)
    if st is None:
        raise state.NoLabError(f"no lab is up at {lab_dir} (start one: haven lab up)")
    if st.phase != "up":
        raise LabError(f"the lab is {st.phase}, not up")
    p = paths(lab_dir)
    p.root.mkdir(exist_ok=True)
    for sub in ("images", "instances"):
        (p.shared / sub).mkdir(parents=True, exist_ok=True)
    plan = lab_plan(st, p.shared, compute_overrides, networking)
    p.plan.write_text(plan_yaml(plan))
    if not p.secrets.exists():
        write_private(p.secrets, Secrets.generate().to_yaml())
        write_private(p.admin_password, secrets.token_urlsafe(18) + "\n")
    shared = Secrets.from_mapping(yaml.safe_load(p.secrets.read_text()))
    password = p.admin_password.read_text().strip()
    if not p.fernet_keys.is_dir():
        _fernet_keys(p.fernet_keys)
    ca = load_or_create_ca(p.ca, plan.cluster_name)
    for name in plan.nodes:
        root = node.root_dir(lab_dir, name)
        write_node_files(plan, name, shared, ca, root)
        keys = config.node_source(root, "/var/lib/haven") / "fernet-keys"
        if keys.exists():
            shutil.rmtree(keys)
        shutil.copytree(p.fernet_keys, keys)
    progress(f"node configuration written for {', '.join(plan.nodes)}")
    client = f"{host_address(st.subnet, CLIENT_HOST)}/{config.prefix_length(st.subnet)}"
    run(["ip", "-n", st.switch_ns, "addr", "replace", client, "dev", st.bridge])
    if networking:
        # the outside world of the provider network: its gateway address, on the
        # provider bridge of the switch (floating IPs are reached from here)
        run(["ip", "-n", st.switch_ns, "addr", "replace", outside_address(), "dev",
             EXT_BRIDGE])
    write_private(p.clouds_yaml, clouds_yaml(auth_url(st), password, p.ca / CA_CERT))
    first = st.nodes[plan.nodes[0]]
    # `haven bootstrap` takes the admin password from the node's state directory (a
    # variable set by `env` would be in that command's arguments)
    write_private(config.node_source(node.root_dir(lab_dir, first.name), ADMIN_PASSWORD_FILE),
                  password + "\n")
    progress(f"haven cluster bootstrap on {first.name} (Galera, RabbitMQ, Haven, VIP)")
    result = node.exec_in(first, [str(HAVEN_BINARY), "cluster", "bootstrap", "--plan",
                                  str(p.plan), "--save", str(p.script)],
                          timeout=timeout, check=False)
    (p.root / "bootstrap.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-3:]
        raise LabError(f"cluster bootstrap failed on {first.name}: {' | '.join(tail)}")
    return time.monotonic() - t0
