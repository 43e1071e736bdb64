"""Haven's configuration: one YAML file, typed sections, documented defaults.

Every key has a default and a docstring-like ``doc`` in its field metadata, so
``haven config defaults`` can print a commented reference file and nothing is
configured by folklore. Loading is strict: an unknown key or a value of the
wrong type or range is refused at start with a message naming the key
(``identity.token_expiration: must be an integer >= 60, got 'soon'``), because
a typo silently falling back to a default is how clusters drift apart.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import socket
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from core.common.private import private_dir
from core.common.tokens import MAX_TOKEN_LIFETIME_S


class ConfigError(ValueError):
    """A configuration file or value that Haven refuses; the message names the key."""


def _doc(text: str, check: Callable[[Any], str | None] | None = None) -> dict[str, Any]:
    return {"doc": text, "check": check}


def _at_least(minimum: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value >= minimum else f"must be >= {minimum}, got {value}"

    return check


def _between(low: int, high: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be between {low} and {high}, got {value}"

    return check


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}, got {value!r}"

    return check


def _listen_address(value: Any) -> str | None:
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return f"must be HOST:PORT, got {value!r}"
    return None


def _database_url(value: Any) -> str | None:
    if value is None:
        return None
    if not str(value).startswith(("sqlite:", "mysql+pymysql:")):
        return f"must be a sqlite: or mysql+pymysql: URL, got {value!r}"
    return None


@dataclass
class DatabaseConfig:
    url: str | None = field(
        default=None,
        metadata=_doc(
            "SQLAlchemy URL. Unset: a SQLite file haven.db in the state directory. "
            "For Galera: mysql+pymysql://USER:PASS@HOST/haven?charset=utf8mb4",
            _database_url,
        ),
    )
    ssl_ca: str | None = field(default=None, metadata=_doc(
        "CA file to verify a MariaDB server's certificate with: every connection is TLS, "
        "the server's certificate checked against it and its name. Unset: no TLS."))
    pool_size: int = field(default=5, metadata=_doc("Connections kept per process.", _at_least(1)))
    max_retries: int = field(
        default=10,
        metadata=_doc(
            "Retries of an idempotent unit of work after a deadlock or a lost connection "
            "(Galera reports write-set conflicts as deadlocks).",
            _at_least(0),
        ),
    )


@dataclass
class BusConfig:
    driver: str = field(
        default="local",
        metadata=_doc("local (in-process, all-in-one only) or amqp.", _one_of("local", "amqp")),
    )
    urls: list[str] = field(
        default_factory=list,
        metadata=_doc("AMQP broker URLs, tried in order (amqp driver)."),
    )


@dataclass
class IdentityConfig:
    listen: str = field(
        default="127.0.0.1:5000",
        metadata=_doc("HOST:PORT the identity API listens on.", _listen_address),
    )
    token_expiration: int = field(
        default=3600,
        metadata=_doc("Token lifetime in seconds.", _between(60, MAX_TOKEN_LIFETIME_S)),
    )
    max_active_keys: int = field(
        default=3,
        metadata=_doc(
            "Fernet keys kept: one staged, one primary, the rest secondary. Must cover "
            "token_expiration / rotation interval + 2 so rotation never strands a live token.",
            _at_least(3),
        ),
    )
    bcrypt_cost: int = field(
        default=12,
        metadata=_doc(
            "bcrypt work factor for stored passwords. Never below Keystone's default (12).",
            _between(12, 16),
        ),
    )
    lockout_failure_attempts: int = field(
        default=6,
        metadata=_doc(
            "Consecutive failed password authentications after which a user is locked for "
            "lockout_duration seconds (Keystone's security_compliance option; 0 turns the "
            "per-user lockout off). The service user is exempt (Keystone's "
            "ignore_lockout_failure_attempts): locking it would stop every service.",
            _at_least(0),
        ),
    )
    lockout_duration: int = field(
        default=1800,
        metadata=_doc(
            "Seconds a locked user stays locked; an admin unlocks earlier by setting the "
            "user enabled (openstack user set --enable).",
            _between(1, 31 * 86400),
        ),
    )
    source_failure_attempts: int = field(
        default=30,
        metadata=_doc(
            "Failed password authentications from one client address, for any users, "
            "after which that address gets 429 for source_lockout_duration seconds (stops "
            "password spraying; 0 turns it off). Counted until the address has been quiet "
            "for source_lockout_duration.",
            _at_least(0),
        ),
    )
    source_lockout_duration: int = field(
        default=300,
        metadata=_doc("Seconds an address that reached source_failure_attempts is refused.",
                      _between(1, 86400)),
    )
    trusted_proxies: list[str] = field(
        default_factory=list,
        metadata=_doc(
            "Addresses of reverse proxies in front of the identity API. Only when the "
            "socket peer is one of them is the last X-Forwarded-For hop taken as the "
            "client's address; otherwise the header is ignored (a client could forge it)."),
    )
    admin_user: str = field(default="admin", metadata=_doc("Name of the bootstrap admin user."))
    admin_project: str = field(
        default="admin", metadata=_doc("Name of the bootstrap admin project.")
    )


@dataclass
class CatalogConfig:
    region: str = field(default="RegionOne", metadata=_doc("Region id of every endpoint."))
    public_host: str | None = field(
        default=None,
        metadata=_doc(
            "Host name or address clients use (the VIP in a cluster). Unset: the host "
            "each service listens on."
        ),
    )
    internal_host: str | None = field(
        default=None, metadata=_doc("Host for internal endpoints. Unset: public_host.")
    )
    admin_host: str | None = field(
        default=None, metadata=_doc("Host for admin endpoints. Unset: internal_host.")
    )


@dataclass
class TlsConfig:
    cert_file: str | None = field(default=None, metadata=_doc(
        "PEM certificate this node's APIs serve, with key_file: every API is https and "
        "the catalog's endpoints too. Unset: plain http (the all-in-one, on 127.0.0.1)."))
    key_file: str | None = field(default=None, metadata=_doc(
        "PEM private key of cert_file (mode 0600)."))
    ca_file: str | None = field(default=None, metadata=_doc(
        "CA certificates the services verify each other's (and the database's and "
        "brokers') certificates against: the cluster CA. Unset: the system's CAs."))

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    @property
    def scheme(self) -> str:
        return "https" if self.enabled else "http"

    @property
    def verify(self) -> str | bool:
        """What ``requests`` takes as ``verify``: the CA file, or the system's CAs
        (never False: a client that does not verify is as good as plain text)."""
        return self.ca_file or True


@dataclass
class ServiceUserConfig:
    name: str = field(
        default="haven-service",
        metadata=_doc("User the services authenticate as when they call each other "
                      "(the compute agent fetching images, creating ports)."),
    )
    project: str = field(default="service", metadata=_doc("Project of the service user."))
    password: str | None = field(
        default=None,
        metadata=_doc("Its password. Unset: generated once into the state directory "
                      "(all-in-one); a cluster sets it here, the same on every node."),
    )


@dataclass
class ImageConfig:
    listen: str = field(default="127.0.0.1:9292",
                        metadata=_doc("HOST:PORT the image API listens on.", _listen_address))
    store_dir: str | None = field(
        default=None,
        metadata=_doc("Where image data is kept. Unset: images/ in the state directory."),
    )
    max_image_size_gb: int = field(default=64, metadata=_doc("Largest upload accepted.",
                                                             _between(1, 4096)))


@dataclass
class SegmentsConfig:
    """Network segments (Neutron's ml2 type drivers): what a tenant network gets and
    which segmentation ids Haven hands out. Checked in core/network/segments.py too."""

    tenant_network_type: str = field(default="vxlan", metadata=_doc(
        "Type of a network a tenant creates (ml2 tenant_network_types).",
        _one_of("vxlan", "vlan")))
    vni_ranges: list[str] = field(default_factory=lambda: ["1:1000"], metadata=_doc(
        "VXLAN network identifiers handed out to tenant networks, as MIN:MAX "
        "(ml2_type_vxlan vni_ranges; DevStack's 1:1000)."))
    network_vlan_ranges: list[str] = field(default_factory=list, metadata=_doc(
        "Physical networks usable for VLANs, as PHYSNET or PHYSNET:MIN:MAX; only the "
        "ranged ones give tenant networks VLAN ids (ml2_type_vlan network_vlan_ranges)."))
    flat_networks: list[str] = field(default_factory=lambda: ["*"], metadata=_doc(
        "Physical networks a flat network may use; '*' any (ml2_type_flat flat_networks)."))
    global_physnet_mtu: int = field(default=1500, metadata=_doc(
        "MTU of the underlay: the physical networks and the VTEP path (Neutron's "
        "global_physnet_mtu).", _between(576, 65535)))
    overlay_ip_version: int = field(default=4, metadata=_doc(
        "IP version of the VTEP addresses: the VXLAN overhead is 50 bytes over IPv4, 70 "
        "over IPv6.", lambda v: None if v in (4, 6) else f"must be 4 or 6, got {v}"))


@dataclass
class DataPathConfig:
    """This hypervisor's side of the tenant networks (Neutron's linuxbridge and
    openvswitch agents' ``local_ip`` and interface mappings) and its mechanism."""

    local_ip: str | None = field(default=None, metadata=_doc(
        "This hypervisor's VXLAN tunnel endpoint: an address of the underlay. Unset: "
        "this host carries no VXLAN network (the agent refuses one)."))
    physical_interface_mappings: list[str] = field(default_factory=list, metadata=_doc(
        "PHYSNET:INTERFACE pairs: the interface that carries each physical network "
        "(flat networks and VLANs)."))
    mechanism: str = field(default="linuxbridge", metadata=_doc(
        "The data-path mechanism: linuxbridge (a bridge per network) or openvswitch (one "
        "integration bridge, br-int, a local VLAN tag per network, VXLAN ports per peer "
        "host; flat and VXLAN networks only; each tap in a Linux bridge of its own, "
        "qbr, where the security groups filter it).", _one_of("linuxbridge", "openvswitch")))
    ovs_datapath_type: str = field(default="auto", metadata=_doc(
        "Open vSwitch only: system (the kernel module), netdev (the userspace datapath; "
        "its VXLAN needs the VTEP address on an OVS bridge holding the underlay "
        "interface) or auto (system if the openvswitch module is loaded, else netdev).",
        _one_of("auto", "system", "netdev")))


@dataclass
class NetworkConfig:
    listen: str = field(default="127.0.0.1:9696",
                        metadata=_doc("HOST:PORT the network API listens on.", _listen_address))
    provider_name: str = field(
        default="provider", metadata=_doc("Name of the shared provider network bootstrap makes."))
    provider_cidr: str = field(
        default="192.0.2.0/24",
        metadata=_doc("Its subnet. The default is TEST-NET-1 (RFC 5737): addresses that are "
                      "never routed anywhere, safe for a demo."),
    )
    segments: SegmentsConfig = field(default_factory=SegmentsConfig)
    datapath: DataPathConfig = field(default_factory=DataPathConfig)
    agent_interval: float = field(default=2.0, metadata=_doc(
        "Seconds between two rounds of a hypervisor's network agent (data path, DHCP, "
        "security groups, port status); a bus nudge starts one sooner.",
        lambda v: None if 0.1 <= v <= 600 else f"must be between 0.1 and 600, got {v}"))
    allinone_networking: bool = field(default=True, metadata=_doc(
        "The all-in-one runs the network agent and the routers itself, its provider "
        "network on a veth local to the machine with the host at the subnet's gateway "
        "(core/network/localnet.py); nothing is routed or NATed onto the machine's "
        "other interfaces unless datapath.physical_interface_mappings maps the "
        "provider's physical network to one (an uplink). false: its guests' taps are "
        "plugged into nothing (how tests run it on a machine's own network)."))
    agent_run_dir: str = field(default="/run/haven/network-agent", metadata=_doc(
        "The network agent's runtime files (dnsmasq's per network, its namespaces' "
        "markers): gone with a reboot, as the namespaces are; every directory down to it "
        "must let dnsmasq's user through."))


@dataclass
class ComputeConfig:
    listen: str = field(default="127.0.0.1:8774",
                        metadata=_doc("HOST:PORT the compute API listens on.", _listen_address))
    host: str | None = field(
        default=None, metadata=_doc("This hypervisor's name. Unset: the machine's host name."))
    libvirt_uri: str = field(default="qemu:///system", metadata=_doc("libvirt connection URI."))
    virt_type: str = field(
        default="qemu",
        metadata=_doc("Domain type: kvm where the host has usable KVM, qemu (TCG) elsewhere.",
                      _one_of("kvm", "qemu")),
    )
    instances_dir: str | None = field(
        default=None,
        metadata=_doc("Instance disks and console logs; may be shared between hypervisors "
                      "(what evacuation needs). Unset: instances/ in the state directory."),
    )
    heartbeat_interval: int = field(
        default=5, metadata=_doc("Seconds between service heartbeats.", _between(1, 60)))
    service_down_time: int = field(
        default=30,
        metadata=_doc("A service whose last heartbeat is older than this is down.",
                      _between(3, 600)),
    )
    reconcile_interval: int = field(
        default=20,
        metadata=_doc("Seconds between full reconciliations of the database with libvirt "
                      "(the bus only speeds work up; this finishes work whose message was "
                      "lost).", _between(1, 3600)),
    )
    shutdown_timeout: int = field(
        default=20,
        metadata=_doc("Seconds a guest gets to power off on stop before it is forced off.",
                      _between(0, 600)),
    )
    demo_image_dir: str | None = field(
        default=None,
        metadata=_doc("Where the all-in-one builds the tiny demo guest (uploaded as image "
                      "'tiny'). Unset: tiny-image/ in the state directory."),
    )
    build_workers: int = field(default=8, metadata=_doc("Instances built in parallel per "
                                                        "agent.", _between(1, 64)))
    guest_nice: int = field(default=0, metadata=_doc(
        "Niceness given to guests' QEMU threads (0: as host services). A positive value "
        "keeps the agent, libvirtd and the database responsive when many guests start at "
        "once (an evacuation) on a host without cgroup CPU reservations.", _between(0, 19)))
    vif_plugging_timeout: int = field(default=300, metadata=_doc(
        "Seconds a new or moved guest waits, paused, for the network agent to report its "
        "port ACTIVE (tap plugged and filtered) before it runs (Nova's option of the same "
        "name; 0: do not wait).", _between(0, 3600)))
    vif_plugging_is_fatal: bool = field(default=True, metadata=_doc(
        "Whether a port not ACTIVE within vif_plugging_timeout fails the build (the instance "
        "goes to ERROR and its domain is destroyed) rather than running the guest unplugged."))
    force_config_drive: bool = field(default=False, metadata=_doc(
        "Give every guest a config drive, not only those whose server asked for one."))
    cpu_allocation_ratio: float = field(default=4.0, metadata=_doc("vCPU overcommit ratio."))
    ram_allocation_ratio: float = field(default=1.0, metadata=_doc("RAM overcommit ratio."))
    reserved_host_memory_mb: int = field(
        default=512, metadata=_doc("RAM kept for the host itself.", _at_least(0)))
    vcpus: int | None = field(default=None, metadata=_doc(
        "vCPUs to report. Unset: what libvirt reports."))
    memory_mb: int | None = field(default=None, metadata=_doc(
        "RAM (MiB) to report. Unset: what libvirt reports."))
    disk_gb: int | None = field(default=None, metadata=_doc(
        "Disk (GiB) to report. Unset: free space of the instances directory."))


@dataclass
class EvacuatorConfig:
    interval: float = field(default=0.5, metadata=_doc(
        "Seconds between two looks at the cluster (crm_mon, the fence history, the "
        "database). Detection itself is Pacemaker's; this only adds up to one interval."))
    max_concurrent_rebuilds: int = field(default=32, metadata=_doc(
        "Instances rebuilding at once, over all failed hosts (the storm governor's bound).",
        _between(1, 1000)))
    parallel_calls: int = field(default=8, metadata=_doc(
        "Evacuate requests made at once (of one priority level): one per failed source "
        "host, each moving all its servers in one transaction.", _between(1, 64)))
    max_failed_share: float = field(default=0.5, metadata=_doc(
        "If more than this share of hypervisors fail together, hold and alert instead of "
        "evacuating onto the few survivors (an operator releases the hold)."))
    max_attempts: int = field(default=3, metadata=_doc(
        "Evacuate calls per instance before it is reported failed.", _between(1, 20)))
    retry_base: float = field(default=5.0, metadata=_doc(
        "Seconds before the first retry of a failed evacuation; doubled each time."))
    retry_max: float = field(default=60.0, metadata=_doc("Longest wait between retries."))
    rebuild_timeout: float = field(default=300.0, metadata=_doc(
        "A rebuild not finished by then on a live target is failed and retried."))


@dataclass
class QuotaConfig:
    """Per-project limits every project gets unless an admin set its own (-1: unlimited).

    Nova's, Neutron's and Glance's upstream defaults; Glance names its limits as
    Keystone unified limits do (``image_size_total`` in MiB).
    """

    instances: int = field(default=10, metadata=_doc("Servers per project.", _at_least(-1)))
    cores: int = field(default=20, metadata=_doc("vCPUs of a project's servers.", _at_least(-1)))
    ram: int = field(default=51200, metadata=_doc("MiB of RAM of a project's servers.",
                                                  _at_least(-1)))
    networks: int = field(default=100, metadata=_doc("Networks per project.", _at_least(-1)))
    ports: int = field(default=500, metadata=_doc(
        "Ports per project (each server's port counts).", _at_least(-1)))
    security_groups: int = field(default=10, metadata=_doc(
        "Security groups per project (its default group counts).", _at_least(-1)))
    security_group_rules: int = field(default=100, metadata=_doc(
        "Security group rules per project (those of new groups count).", _at_least(-1)))
    routers: int = field(default=10, metadata=_doc("Routers per project.", _at_least(-1)))
    floatingips: int = field(default=50, metadata=_doc("Floating IPs per project.",
                                                       _at_least(-1)))
    image_count_total: int = field(default=100, metadata=_doc(
        "Images per project (any status but deleted).", _at_least(-1)))
    image_size_total: int = field(default=1048576, metadata=_doc(
        "MiB of image data per project (active images; default 1 TiB).", _at_least(-1)))
    key_pairs: int = field(default=100, metadata=_doc(
        "Key pairs per user (Nova's: the limit is the project's, counted per user).",
        _at_least(-1)))


@dataclass
class ApiConfig:
    max_limit: int = field(default=1000, metadata=_doc(
        "Most items one page of a list answers (as Nova's api.max_limit): a larger "
        "'limit', or none, gets this many and a link to the next page.", _between(1, 100000)))


@dataclass
class LogConfig:
    level: str = field(
        default="INFO",
        metadata=_doc("Log level.", _one_of("DEBUG", "INFO", "WARNING", "ERROR")),
    )
    file: str | None = field(default=None, metadata=_doc("Log file. Unset: standard error."))


@dataclass
class HavenConfig:
    state_dir: str = field(
        default="./.haven",
        metadata=_doc("Directory for the SQLite file, Fernet keys and other local state."),
    )
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    bus: BusConfig = field(default_factory=BusConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    service_user: ServiceUserConfig = field(default_factory=ServiceUserConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    evacuator: EvacuatorConfig = field(default_factory=EvacuatorConfig)
    quota: QuotaConfig = field(default_factory=QuotaConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).resolve()

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.state_path / 'haven.db'}"

    @property
    def fernet_key_dir(self) -> Path:
        return self.state_path / "fernet-keys"

    @property
    def image_store_path(self) -> Path:
        return Path(self.image.store_dir).resolve() if self.image.store_dir else (
            self.state_path / "images")

    @property
    def instances_path(self) -> Path:
        return Path(self.compute.instances_dir).resolve() if self.compute.instances_dir else (
            self.state_path / "instances")

    @property
    def compute_host(self) -> str:
        return self.compute.host or socket.gethostname()

    def service_password(self) -> str:
        """The service user's password: configured, or generated once into the state dir."""
        if self.service_user.password:
            return self.service_user.password
        path = self.state_path / "service-password"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        private_dir(self.state_path)
        password = secrets.token_urlsafe(24)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process of this node won the race
            return path.read_text().strip()
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        return password


T = TypeVar("T")


def _type_name(tp: Any) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", float: "a number"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(key: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(key, options[0], value)
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: must be a list, got {value!r}")
        return [_convert(f"{key}[{i}]", item_type, v) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: must be a mapping of settings, got {value!r}")
        return _build(typing.cast(type, tp), value, prefix=f"{key}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{key}: must be {_type_name(tp)}, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported setting type {tp!r}")  # a bug in the schema


def _build(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown setting (known here: {', '.join(sorted(fields))})"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        converted = _convert(key, hints[name], value)
        check = fields[name].metadata.get("check")
        if check is not None and converted is not None:
            problem = check(converted)
            if problem:
                raise ConfigError(f"{key}: {problem}")
        kwargs[name] = converted
    return cls(**kwargs)


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: Mapping[str, Any] | None = None
) -> HavenConfig:
    """Read the YAML file at ``path`` (or nothing: all defaults), then apply ``overrides``.

    ``overrides`` maps dotted keys to values (``{"state_dir": "/srv/haven"}``), the
    way command-line options reach the config; they are checked like file values.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of settings")
        data = loaded
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    cfg = _build(HavenConfig, data)
    if bool(cfg.tls.cert_file) != bool(cfg.tls.key_file):
        raise ConfigError("tls.cert_file and tls.key_file: set both or neither")
    return cfg


def defaults_yaml() -> str:
    """A commented YAML file of every setting with its default: the reference."""
    lines: list[str] = ["# Haven configuration: every setting, with its default."]

    def walk(cls: type, indent: str) -> None:
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(hint):
                lines.append(f"{indent}{f.name}:")
                walk(hint, indent + "  ")  # type: ignore[arg-type]
                continue
            lines.append(f"{indent}# {f.metadata.get('doc', '')}")
            has_factory = f.default_factory is not dataclasses.MISSING
            default = f.default_factory() if has_factory else f.default  # type: ignore[operator]
            rendered = yaml.safe_dump(default, default_flow_style=True).strip()
            rendered = rendered.removesuffix("\n...").removesuffix("...").strip()
            lines.append(f"{indent}{f.name}: {rendered}")

    walk(HavenConfig, "")
    return "\n".join(lines) + "\n"
