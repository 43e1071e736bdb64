"""A cluster node's own configuration files, from the cluster plan: Galera's
my.cnf fragment, RabbitMQ's config and Erlang cookie, and Haven's config.

``haven cluster node-config`` writes them on each node (the lab writes them into
each node's private directories). Pure functions returning text, so every
setting and the reason for it is checked by unit tests; the timing choices are
explained in the comments the files carry, where an operator will read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import yaml

from core.common.files import write_private
from core.compute.virt.hostconf import configure_libvirt, lease_dir
from ha.bootstrap.cib import ClusterPlan, fence_password_file
from ha.bootstrap.tls import ClusterCA

GALERA_CNF = "/etc/mysql/mariadb.conf.d/90-haven-galera.cnf"
RABBITMQ_CONF = "/etc/rabbitmq/rabbitmq.conf"
RABBITMQ_ADVANCED = "/etc/rabbitmq/advanced.config"
ERLANG_COOKIE = "/var/lib/rabbitmq/.erlang.cookie"
RABBITMQ_ENV = "/etc/rabbitmq/rabbitmq-env.conf"
RABBITMQ_DIST_TLS = "/etc/rabbitmq/inter_node_tls.config"
BUS_USER = "haven"
DB_USER = "haven"
DB_NAME = "haven"
# Erlang's distribution tick: a peer silent for ~net_ticktime (60 s by default,
# so up to 75 s) is declared down. A cut link would leave RabbitMQ waiting that
# long before its quorum queues elect a new leader; 10 s keeps detection in line
# with corosync's token, and is still far above any pause a loaded lab node sees.
NET_TICKTIME_S = 10
# Galera's group communication: a peer silent for suspect_timeout is suspected,
# and evicted once every member suspects it (or after inactive_timeout). The
# defaults (5 s / 15 s) leave writers blocked up to 15 s after a power loss;
# 3 s / 6 s brings it under corosync's fence delay, so the database is writable
# again by the time Pacemaker has fenced the node (measured in the lab: a cut node
# goes non-Primary in 4-5 s with these, the others go on).
# The Erlang VM's schedulers spin (busy-wait) before they sleep, burning a core
# each that the node's other daemons (Galera, corosync, Haven, guests) need: on a
# small controller, or a lab of several nodes sharing 2 cores, that spinning
# starves them. Off for the normal, dirty-CPU and dirty-IO schedulers.
RABBITMQ_VM_ARGS = "+sbwt none +sbwtdcpu none +sbwtdio none"
GALERA_PROVIDER_OPTIONS = ("evs.suspect_timeout=PT3S;evs.inactive_timeout=PT6S;"
                           "evs.keepalive_period=PT1S;evs.install_timeout=PT6S;"
                           "gmcast.peer_timeout=PT3S")
# The cluster CA's certificate and this node's certificate and key (ha/bootstrap/tls.py)
TLS_DIR = "/etc/haven/tls"
TLS_CA = f"{TLS_DIR}/ca.crt"
TLS_CERT = f"{TLS_DIR}/node.crt"
TLS_KEY = f"{TLS_DIR}/node.key"
# RabbitMQ's and MariaDB's copies (each runs as its own user and must read its key)
RABBITMQ_TLS_DIR = "/etc/rabbitmq/tls"
MYSQL_TLS_DIR = "/etc/mysql/tls"
# Who owns what node-config writes under a directory (the others: root)
OWNERS: Mapping[str, str] = {"/etc/rabbitmq/": "rabbitmq", "/var/lib/rabbitmq/": "rabbitmq",
                             f"{MYSQL_TLS_DIR}/": "mysql"}
AMQPS_PORT = 5671
API_PORTS: Mapping[str, int] = {"identity": 5000, "compute": 8774, "image": 9292,
                                "network": 9696}


@dataclass(frozen=True)
class Secrets:
    """Shared by every node: generated once by the operator (or the lab)."""

    db_password: str
    bus_password: str
    service_password: str
    erlang_cookie: str
    fence_passwords: Mapping[str, str] = field(default_factory=dict)  # node -> its device's

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> Secrets:
        missing = [k for k in ("db_password", "bus_password", "service_password",
                               "erlang_cookie") if not data.get(k)]
        if missing:
            raise ValueError(f"secrets: {missing[0]}: required")
        fence = data.get("fence_passwords") or {}
        if not isinstance(fence, Mapping):
            raise ValueError("secrets: fence_passwords: a mapping of node to password")
        return cls(db_password=str(data["db_password"]), bus_password=str(data["bus_password"]),
                   service_password=str(data["service_password"]),
                   erlang_cookie=str(data["erlang_cookie"]),
                   fence_passwords={str(k): str(v) for k, v in fence.items()})

    @classmethod
    def generate(cls) -> Secrets:
        import secrets
        return cls(db_password=secrets.token_urlsafe(18), bus_password=secrets.token_urlsafe(18),
                   service_password=secrets.token_urlsafe(18),
                   erlang_cookie=secrets.token_hex(16).upper())

    def to_yaml(self) -> str:
        data: dict[str, object] = {"db_password": self.db_password,
                                   "bus_password": self.bus_password,
                                   "service_password": self.service_password,
                                   "erlang_cookie": self.erlang_cookie}
        if self.fence_passwords:
            data["fence_passwords"] = dict(self.fence_passwords)
        return yaml.safe_dump(data)


def mariadb_tls_conf(tls_dir: str) -> str:
    """[mysqld] lines: clients over TCP (Haven) must use TLS, with the node's certificate.
    Local socket connections (the galera agent, an operator's mysql) are not TCP."""
    return f"""# Clients over TCP (Haven) must use TLS; local socket connections are not TCP.
ssl_ca = {tls_dir}/ca.crt
ssl_cert = {tls_dir}/node.crt
ssl_key = {tls_dir}/node.key
require_secure_transport = ON
"""


def galera_tls_options() -> str:
    """Galera's group communication and IST over TLS (socket.ssl is then on)."""
    return (f"socket.ssl_key={MYSQL_TLS_DIR}/node.key;socket.ssl_cert={MYSQL_TLS_DIR}/node.crt;"
            f"socket.ssl_ca={MYSQL_TLS_DIR}/ca.crt")


def galera_cnf(plan: ClusterPlan, node: str) -> str:
    address = plan.address_of(node)
    members = ",".join(plan.nodes)
    return f"""# Written by `haven cluster node-config` for {node}: Galera for Haven.
[mysqld]
bind-address = {address}
# Galera replicates row events only, and needs interleaved auto-increment locks.
binlog_format = ROW
default_storage_engine = InnoDB
innodb_autoinc_lock_mode = 2
innodb_buffer_pool_size = {plan.db_buffer_pool}
# Durability: a write Haven reported as saved is on the certifying nodes' logs.
innodb_flush_log_at_trx_commit = 1
performance_schema = OFF
skip-name-resolve = ON
{mariadb_tls_conf(MYSQL_TLS_DIR)}
[galera]
wsrep_on = ON
wsrep_provider = /usr/lib/galera/libgalera_smm.so
wsrep_cluster_name = {plan.cluster_name}
# Members by name (resolved through /etc/hosts); Pacemaker's galera agent
# rewrites it at start, but rsync SST refuses to start without one here.
wsrep_cluster_address = gcomm://{members}
wsrep_node_name = {node}
wsrep_node_address = {address}
wsrep_sst_method = rsync
# Fast eviction of a dead member (see ha/bootstrap/nodeconf.py for the why), and
# replication and incremental state transfer over TLS with the cluster CA:
wsrep_provider_options = "{GALERA_PROVIDER_OPTIONS};{galera_tls_options()}"

[sst]
# Full state transfers (rsync) through stunnel, the peer verified against the
# cluster CA; without stunnel the transfer fails instead of going in clear text.
tkey = {MYSQL_TLS_DIR}/node.key
tcert = {MYSQL_TLS_DIR}/node.crt
tca = {MYSQL_TLS_DIR}/ca.crt
ssl-mode = VERIFY_CA
"""


def rabbitmq_tls_conf(tls_dir: str, listen: str) -> str:
    """The broker's AMQPS listener (``listen``: a port, or address:port)."""
    return f"""listeners.ssl.default = {listen}
ssl_options.cacertfile = {tls_dir}/ca.crt
ssl_options.certfile = {tls_dir}/node.crt
ssl_options.keyfile = {tls_dir}/node.key
ssl_options.verify = verify_peer
# clients authenticate with the password; a client certificate is not required
ssl_options.fail_if_no_peer_cert = false
ssl_options.versions.1 = tlsv1.3
ssl_options.versions.2 = tlsv1.2
"""


def rabbitmq_conf(secrets: Secrets) -> str:
    return f"""# Written by `haven cluster node-config`: RabbitMQ for Haven.
# AMQP over TLS only (the cluster CA's certificates); no plain-text listener.
listeners.tcp = none
{rabbitmq_tls_conf(RABBITMQ_TLS_DIR, str(AMQPS_PORT))}
# Pacemaker's rabbitmq-cluster agent wipes a node's database on every start; a
# node that starts first makes this user again, a joining node gets the
# cluster's. Haven only ever talks to the broker as this user.
default_user = {BUS_USER}
default_pass = {secrets.bus_password}
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
# A minority partition pauses instead of serving (and later losing) messages.
cluster_partition_handling = pause_minority
"""


def rabbitmq_dist_tls(tls_dir: str) -> str:
    """Erlang's TLS distribution options (``-ssl_dist_optfile``): both ends present the
    node's certificate and verify the other's against the cluster CA."""
    def side(name: str, extra: str) -> str:
        return (f'{{{name}, [{{cacertfile, "{tls_dir}/ca.crt"}}, '
                f'{{certfile, "{tls_dir}/node.crt"}}, {{keyfile, "{tls_dir}/node.key"}}, '
                f"{{verify, verify_peer}}, {{secure_renegotiate, true}}{extra}]}}")
    return ("%% Written by `haven cluster node-config`: Erlang distribution over TLS.\n"
            f"[{side('server', ', {fail_if_no_peer_cert, true}')},\n"
            f" {side('client', '')}].\n")


def rabbitmq_dist_args(optfile: str) -> str:
    return f"-proto_dist inet_tls -ssl_dist_optfile {optfile}"


def rabbitmq_env() -> str:
    """The broker and rabbitmqctl (the rabbitmq-cluster agent's, bus-members') both
    speak Erlang distribution over TLS: clustering, queue replication, and the CLI.
    The broker's VM does not busy-wait (``RABBITMQ_VM_ARGS``)."""
    args = rabbitmq_dist_args(RABBITMQ_DIST_TLS)
    return ("# Written by `haven cluster node-config`: Erlang distribution over TLS;\n"
            "# the broker's schedulers sleep instead of spinning (busy-wait off).\n"
            f'SERVER_ADDITIONAL_ERL_ARGS="{args} {RABBITMQ_VM_ARGS}"\n'
            f'CTL_ERL_ARGS="{args}"\n')


def rabbitmq_advanced(cluster_size: int) -> str:
    """Erlang terms for the kernel and the broker. ``cluster_size``: the number of
    brokers; every quorum queue gets a member on each (RabbitMQ's default is 3:
    in a 5-node cluster a queue on 3 members loses its majority when two of them
    go, a frozen node and a cut one, while a majority of the brokers still runs)."""
    if cluster_size < 1:
        raise ValueError(f"cluster size must be at least 1, got {cluster_size}")
    return f"""%% Written by `haven cluster node-config`.
%% net_ticktime {NET_TICKTIME_S} s instead of 60: a silent peer is declared down
%% in ~{NET_TICKTIME_S} s, not ~75 s, so quorum queues fail over soon after a node is lost.
%% quorum_cluster_size {cluster_size}: a quorum queue has a member on every broker
%% (the default, 3, would let two lost nodes take a queue's majority in a larger cluster).
[{{kernel, [{{net_ticktime, {NET_TICKTIME_S}}}]}},
 {{rabbit, [{{quorum_cluster_size, {cluster_size}}}]}}].
"""


def haven_config(plan: ClusterPlan, node: str, secrets: Secrets) -> str:
    """The Haven config of one node: Galera through its local member, every broker
    (its own first), the catalog at the VIP, shared images and instances."""
    vip = plan.vip.split("/", 1)[0]
    brokers = [node] + [n for n in plan.nodes if n != node]
    data: dict[str, object] = {
        "state_dir": "/var/lib/haven",
        "database": {"url": f"mysql+pymysql://{DB_USER}:{quote(secrets.db_password, safe='')}@"
                            f"{plan.address_of(node)}/{DB_NAME}?charset=utf8mb4",
                     # TLS to the database, its certificate checked against the CA
                     "ssl_ca": TLS_CA},
        "bus": {"driver": "amqp",
                "urls": [f"amqps://{BUS_USER}:{quote(secrets.bus_password, safe='')}@{b}:"
                         f"{AMQPS_PORT}/%2F" for b in brokers]},
        "catalog": {"public_host": vip},
        # every API over https with this node's certificate; every client verifies
        # against the cluster CA
        "tls": {"cert_file": TLS_CERT, "key_file": TLS_KEY, "ca_file": TLS_CA},
        "service_user": {"password": secrets.service_password},
        "identity": {"listen": f"0.0.0.0:{API_PORTS['identity']}"},
        "compute": {"listen": f"0.0.0.0:{API_PORTS['compute']}", "host": node},
        "image": {"listen": f"0.0.0.0:{API_PORTS['image']}"},
        "network": {"listen": f"0.0.0.0:{API_PORTS['network']}"},
    }
    if plan.shared_dir:
        data["image"] = {**data["image"],  # type: ignore[dict-item]
                         "store_dir": str(Path(plan.shared_dir) / "images")}
        data["compute"] = {**data["compute"],  # type: ignore[dict-item]
                           "instances_dir": str(Path(plan.shared_dir) / "instances")}
    if plan.network_agents:
        # the tenant networks' data path: VXLAN over the cluster network (a node the
        # plan gives no address carries no VXLAN network), the physical networks on the
        # interfaces the plan names
        datapath: dict[str, object] = {"physical_interface_mappings": [
            f"{net}:{nic}" for net, nic in sorted(plan.physical_interfaces.items())]}
        if node in plan.addresses:
            datapath["local_ip"] = plan.addresses[node]
        data["network"] = {**data["network"], "datapath": datapath}  # type: ignore[dict-item]
    else:
        # No network agent plugs a port in this cluster, so nobody would report one
        # ACTIVE: a hypervisor that waited for its guests' ports would fail every boot.
        data["compute"] = {**data["compute"],  # type: ignore[dict-item]
                           "vif_plugging_timeout": 0}
    if plan.compute_overrides and node in plan.hypervisors:
        data["compute"] = {**data["compute"], **plan.compute_overrides}  # type: ignore[dict-item]
    header = f"# Written by `haven cluster node-config` for {node}.\n"
    return header + yaml.safe_dump(data, sort_keys=False)


def node_names(plan: ClusterPlan, node: str) -> list[str]:
    """Every name a client may reach this node's services by: the certificate's SANs.
    The VIP (whoever holds it answers for it) and loopback (the node's own health
    checks) included."""
    return [node, plan.address_of(node), plan.vip.split("/", 1)[0], "localhost", "127.0.0.1"]


def tls_files(plan: ClusterPlan, node: str, ca: ClusterCA) -> dict[str, tuple[str, int]]:
    """The node's certificate and key, for Haven and (as its own user's) RabbitMQ."""
    key, cert = ca.issue(node, node_names(plan, node))
    files = {}
    for directory in (TLS_DIR, RABBITMQ_TLS_DIR, MYSQL_TLS_DIR):
        files[f"{directory}/ca.crt"] = (ca.cert_pem.decode(), 0o644)
        files[f"{directory}/node.crt"] = (cert.decode(), 0o644)
        files[f"{directory}/node.key"] = (key.decode(), 0o600)
    return files


def node_files(plan: ClusterPlan, node: str, secrets: Secrets, ca: ClusterCA
               ) -> dict[str, tuple[str, int]]:
    """Every file of one node: path -> (content, mode)."""
    if node not in plan.nodes:
        raise ValueError(f"{node}: not a node of the plan ({', '.join(plan.nodes)})")
    files = {
        **tls_files(plan, node, ca),
        GALERA_CNF: (galera_cnf(plan, node), 0o644),
        RABBITMQ_CONF: (rabbitmq_conf(secrets), 0o640),
        RABBITMQ_ADVANCED: (rabbitmq_advanced(len(plan.nodes)), 0o640),
        RABBITMQ_ENV: (rabbitmq_env(), 0o644),
        RABBITMQ_DIST_TLS: (rabbitmq_dist_tls(RABBITMQ_TLS_DIR), 0o640),
        ERLANG_COOKIE: (secrets.erlang_cookie, 0o400),
        plan.haven_config: (haven_config(plan, node, secrets), 0o640),
    }
    if plan.fence_password_files:
        # every node may run any other node's fence device: each gets them all
        missing = [n for n in plan.nodes if not secrets.fence_passwords.get(n)]
        if missing:
            raise ValueError(f"secrets: fence_passwords: no password for {', '.join(missing)}")
        for other in plan.nodes:
            files[fence_password_file(other)] = (secrets.fence_passwords[other] + "\n", 0o600)
    return files


def write_node_files(plan: ClusterPlan, node: str, secrets: Secrets, ca: ClusterCA,
                     root: Path) -> list[Path]:
    """Write ``node_files`` under ``root`` (``/`` on a real node); RabbitMQ's and
    MariaDB's files belong to their users (the broker refuses a cookie anyone else
    can read; each must read its own TLS key)."""
    import contextlib
    import grp
    import pwd

    users: dict[str, tuple[int, int]] = {}
    for user in set(OWNERS.values()):
        # no such user: the package is not installed here; nothing to own
        with contextlib.suppress(KeyError):
            users[user] = (pwd.getpwnam(user).pw_uid, grp.getgrnam(user).gr_gid)
    written = []
    for path, (content, mode) in node_files(plan, node, secrets, ca).items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        # a new file with its mode (and owner) from the start, renamed over the old
        # one: a read-only cookie is replaced, and no secret is ever readable by others
        owner = next((users.get(u) for prefix, u in OWNERS.items() if path.startswith(prefix)),
                     None)
        write_private(target, content, mode, owner)
        written.append(target)
    if node in plan.hypervisors:
        etc_libvirt = root / "etc" / "libvirt"
        configure_libvirt(etc_libvirt, node_leases(plan, node))
        written += [etc_libvirt / name for name in ("qemu.conf", "qemu-lockd.conf")]
    return written


def node_leases(plan: ClusterPlan, node: str) -> Path:
    """The disk lease directory of a hypervisor: on the shared instances directory
    when the plan has shared storage (every hypervisor sees every lease)."""
    instances = plan.compute_overrides.get("instances_dir") or (
        Path(plan.shared_dir) / "instances" if plan.shared_dir else None)
    return lease_dir(Path(str(instances)) if instances else None)
