"""ocf:haven:haven-l3: one shard of the cloud's routers on this node.

Routers are sharded (:mod:`core.network.routerns.shards`): resource ``haven-l3-N``
with ``shard=N shards=K`` carries every router whose id hashes to N. Each shard is a
primitive, so Pacemaker runs it on one network node at a time, and after a node is
lost it starts it elsewhere only once fencing has confirmed the node off: a router's
addresses and MACs are never live on two nodes.

* start: every router of the shard is built from the database (its namespace, veth
  legs on the node's bridges, addresses, routes, NAT; gratuitous ARP for each address
  taken, so the outside learns the new MAC at once after a failover), then a marker
  in ``state_dir`` records that this node holds the shard.
* after a convergence that bound router ports to this node (a start after a failover
  or a move, a router new in the shard), the network agents those ports concern
  (this node's, the old node's, the VXLAN peers') get the nudge the network API
  sends after a binding change, so this node's agent makes the routers' bridges at
  once instead of at its next periodic round (best effort, bounded by
  ``NUDGE_TIMEOUT``: a nudge that cannot be sent leaves the work to that round).
* monitor (every 5 s): the same convergence again. This is how routers created,
  changed or deleted through the API reach the data plane: the monitor, not a
  companion loop, because then one process (Pacemaker's) decides when the shard runs
  here, and a loop cannot outlive a stop or run while the shard starts elsewhere.
  A converged router is only read (``ip``/``nft`` listings), never rewritten.
  What fails the monitor (Pacemaker then stops and restarts the shard, or moves it):
  a router this node cannot make as planned (a command failed, a bridge missing, the
  namespace read back differs). What does not: a router whose own description cannot
  be carried out (a plan error, a port without an address): it fails the same on
  every node, so moving its shard would only take its siblings down; it is logged.
  A database that cannot be read leaves the running routers as they are (traffic
  keeps flowing; changes wait) and the monitor succeeds with a warning: the data
  plane does not depend on the control plane, and Pacemaker's colocation with a
  promoted Galera moves the shard if the node's database member is lost.
* stop: every namespace of the shard removed (also routers the database no longer
  knows), then the marker. Succeeds with a bad configuration (a stop that fails
  gets the node fenced).
* a probe finding namespaces of the shard without the marker (left by a crashed
  agent) reports a failure, never "not running": Pacemaker then stops them here
  before it starts the shard anywhere.
* validate-all: shard and shards are integers with 0 <= shard < shards, the config
  loads; otherwise ERR_CONFIGURED with the reason.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ha.ocf import Agent, Exit, OcfError

if TYPE_CHECKING:
    from core.common.config import HavenConfig
    from core.network.routerns.shards import Outcome

# How long a start waits for the network agent to make the routers' bridges: well
# within the shard's start timeout (120 s), several of the agent's rounds.
BRIDGE_WAIT = 60.0
# How long nudging the network agents may try to reach a broker: short, since the
# agents' periodic rounds do the same work anyway.
NUDGE_TIMEOUT = 5.0
PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class L3Agent:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        agent = Agent(name="haven-l3", shortdesc="One shard of Haven's routers",
                      longdesc=__doc__ or "")
        if env is not None:
            agent.env = env
        agent.add_parameter("config", "Haven config file (YAML)", required=True)
        agent.add_parameter("shard", "This resource's shard number (0 .. shards-1)",
                            required=True, unique=True, content_type="integer")
        agent.add_parameter("shards", "How many shards the routers are spread over (the "
                            "same on every haven-l3 resource)", default="3",
                            content_type="integer")
        agent.add_parameter("state_dir", "Where the marker of a held shard lives",
                            default="/run/haven")
        agent.add_parameter("namespace_prefix", "Prefix of the routers' namespace names "
                            "(Neutron's qrouter-)", default="qrouter-")
        agent.add_parameter("bridge_wait", "Seconds a router may wait for this node's "
                            "network agent to make a bridge its legs go into (at start, "
                            "and for a new interface) before the shard fails here",
                            default=str(int(BRIDGE_WAIT)), content_type="integer")
        agent.add_action("start", self.start, timeout=120)
        agent.add_action("stop", self.stop, timeout=120)
        agent.add_monitor(0, self.monitor, timeout=60, interval=5)
        agent.add_action("validate-all", self.validate, timeout=20)
        self.agent = agent

    # ---- parameters ----------------------------------------------------------------------
    def numbers(self) -> tuple[int, int]:
        """(shard, shards), or ERR_CONFIGURED naming what is wrong."""
        raw_shard, raw_shards = self.agent.param("shard") or "", self.agent.param("shards") or ""
        if not raw_shards.isdigit() or int(raw_shards) < 1:
            raise OcfError(Exit.ERR_CONFIGURED, f"shards must be a positive integer, got "
                                                f"{raw_shards!r}")
        if not raw_shard.isdigit() or int(raw_shard) >= int(raw_shards):
            raise OcfError(Exit.ERR_CONFIGURED, f"shard must be an integer from 0 to "
                                                f"{int(raw_shards) - 1}, got {raw_shard!r}")
        return int(raw_shard), int(raw_shards)

    def prefix(self) -> str:
        prefix = self.agent.param("namespace_prefix") or ""
        if not PREFIX_RE.match(prefix):
            raise OcfError(Exit.ERR_CONFIGURED, f"namespace_prefix {prefix!r}: letters, "
                                                "digits, '_', '.', '-' (at most 64)")
        return prefix

    def bridge_wait(self) -> float:
        raw = self.agent.param("bridge_wait") or str(int(BRIDGE_WAIT))
        if not raw.isdigit() or int(raw) > 3600:
            raise OcfError(Exit.ERR_CONFIGURED, f"bridge_wait must be an integer from 0 to "
                                                f"3600 (seconds), got {raw!r}")
        return float(raw)

    def load_config(self) -> HavenConfig:
        from core.common.config import ConfigError, load_config

        path = self.agent.param("config") or ""
        if not Path(path).is_file():
            raise OcfError(Exit.ERR_CONFIGURED, f"config file {path!r} does not exist")
        try:
            return load_config(path)
        except ConfigError as exc:
            raise OcfError(Exit.ERR_CONFIGURED, f"bad config: {exc}") from None

    def marker(self) -> Path:
        name = self.agent.instance.replace(":", "-")
        return Path(self.agent.param("state_dir") or "/run/haven") / f"{name}.l3-held"

    # ---- actions ---------------------------------------------------------------------------
    def validate(self) -> int:
        self.numbers()
        self.prefix()
        self.bridge_wait()
        mechanism = self.load_config().network.datapath.mechanism
        if mechanism != "linuxbridge":
            # the routers' legs go into the networks' Linux bridges (brq...)
            raise OcfError(Exit.ERR_CONFIGURED, f"network.datapath.mechanism {mechanism}: "
                                                "routers run on linuxbridge nodes only")
        return Exit.SUCCESS

    def _converge(self) -> Outcome:
        """One convergence of the shard; raises the database's error as it is."""
        from core.common.db import Database
        from core.network.agent.linuxbridge import bridge_name
        from core.network.routerns import shards

        shard, count = self.numbers()
        cfg = self.load_config()
        db = Database(cfg.database_url, pool_size=1, max_retries=1,
                      ssl_ca=cfg.database.ssl_ca)
        try:
            outcome = shards.converge(db, shard, count, bridge_name, prefix=self.prefix(),
                                      host=cfg.compute_host)
        finally:
            db.dispose()
        for rid in outcome.removed:
            self.agent.log.info("router %s is gone: its namespace removed", rid)
        if outcome.bound:
            self.agent.log.info("bound %d router ports here", len(outcome.bound))
        self._nudge(cfg, outcome.nudge)
        for rid, why in sorted(outcome.waiting.items()):
            self.agent.log.warning("router %s waits for the network agent: %s", rid, why)
        for rid, why in sorted(outcome.unplannable.items()):
            self.agent.log.error("router %s cannot be carried out (on any node): %s", rid, why)
        return outcome

    def _nudge(self, cfg: HavenConfig, hosts: set[str]) -> None:
        """Nudge the network agents of ``hosts`` (the binding is committed by now)."""
        if not hosts or cfg.bus.driver != "amqp":
            return  # the local bus reaches no other process: the rounds do it
        from core.common.bus import BusError
        from core.common.bus.amqp import AmqpBus
        from core.network.agent_nudges import send_now

        try:
            bus = AmqpBus(cfg.bus.urls, name=f"l3-{cfg.compute_host}",
                          retry_timeout=NUDGE_TIMEOUT, ca_file=cfg.tls.ca_file)
        except BusError as exc:
            self.agent.log.warning("network agents not nudged (their rounds will do it): "
                                   "%s", exc)
            return
        try:
            send_now(bus, hosts)
        finally:
            bus.close()
        self.agent.log.info("nudged the network agents of %s", ", ".join(sorted(hosts)))

    def _fail_on_node_problems(self, action: str, outcome: Outcome) -> None:
        if outcome.failed:
            rid, why = sorted(outcome.failed.items())[0]
            more = f" (and {len(outcome.failed) - 1} more)" if len(outcome.failed) > 1 else ""
            raise OcfError(Exit.ERR_GENERIC, f"{action}: router {rid} not as planned on this "
                                             f"node{more}: {why}"[:400])

    def start(self) -> int:
        self.validate()
        # The routers' ports are bound here by the first convergence; this node's
        # network agent then makes their networks' bridges at its next round. A start
        # waits for them (within its timeout), then fails, so Pacemaker tries another node.
        wait = self.bridge_wait()
        deadline = time.monotonic() + wait
        while True:
            try:
                outcome = self._converge()
            except OcfError:
                raise
            except Exception as exc:  # the database cannot be read: nothing to build from
                raise OcfError(Exit.ERR_GENERIC, f"start: the database cannot be read: "
                                                 f"{type(exc).__name__}: {exc}"[:400]) from None
            if not outcome.waiting or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        self._fail_on_node_problems("start", outcome)
        if outcome.waiting:
            rid, why = sorted(outcome.waiting.items())[0]
            raise OcfError(Exit.ERR_GENERIC, f"start: router {rid}: {why} after "
                                             f"{wait:.0f} s (is haven-network-agent "
                                             f"running here?)"[:400])
        self.waiting_since().unlink(missing_ok=True)
        marker = self.marker()
        marker.parent.mkdir(parents=True, exist_ok=True)
        shard, count = self.numbers()
        marker.write_text(f"node={socket.gethostname()} shard={shard} shards={count}\n")
        self.agent.log.info("holds shard %d of %d: %d routers", shard, count,
                            len(outcome.converged))
        return Exit.SUCCESS

    def stop(self) -> int:
        from core.network.routerns import shards

        try:
            shard, count = self.numbers()
            prefix = self.prefix()
        except OcfError as err:  # misconfigured: it cannot have started here
            self.agent.log.warning("stop with a bad configuration: %s", err.reason)
            self.marker().unlink(missing_ok=True)
            return Exit.SUCCESS
        gone = shards.remove_all(shard, count, prefix)
        self.marker().unlink(missing_ok=True)
        self.waiting_since().unlink(missing_ok=True)
        self.agent.log.info("released shard %d: %d namespaces removed", shard, len(gone))
        return Exit.SUCCESS

    def monitor(self) -> int:
        from core.network.routerns import shards

        try:
            shard, count = self.numbers()
            prefix = self.prefix()
        except OcfError:
            if self.agent.is_probe("monitor"):
                return Exit.NOT_RUNNING
            raise
        if not self.marker().exists():
            stale = shards.namespaces_of(shard, count, prefix)
            if stale:
                raise OcfError(Exit.ERR_GENERIC, f"namespaces of shard {shard} present but "
                                                 f"this node does not hold it: "
                                                 f"{', '.join(sorted(stale))}"[:400])
            return Exit.NOT_RUNNING
        try:
            outcome = self._converge()
        except OcfError:
            raise
        except Exception as exc:
            self.agent.log.warning("the database cannot be read (%s: %s): the routers stay "
                                   "as they are", type(exc).__name__, exc)
            return Exit.SUCCESS
        self._fail_on_node_problems("monitor", outcome)
        self._fail_on_a_long_wait(outcome)
        return Exit.SUCCESS

    def waiting_since(self) -> Path:
        marker = self.marker()
        return marker.with_name(marker.name + ".waiting")

    def _fail_on_a_long_wait(self, outcome: Outcome) -> None:
        """A router waiting for a bridge (a new interface, a bridge removed by hand) is
        fine for ``bridge_wait`` seconds: the network agent makes it at its next round.
        Longer, this node cannot carry the shard (its network agent is not doing its
        job), and the monitor fails so that Pacemaker recovers it."""
        since = self.waiting_since()
        if not outcome.waiting:
            since.unlink(missing_ok=True)
            return
        if not since.exists():
            since.write_text(f"{time.time()}\n")
        try:
            waited = time.time() - float(since.read_text())
        except ValueError:
            waited = float("inf")  # unreadable: the wait cannot be shown short
        if waited >= self.bridge_wait():
            rid, why = sorted(outcome.waiting.items())[0]
            raise OcfError(Exit.ERR_GENERIC, f"monitor: router {rid}: {why} for "
                                             f"{waited:.0f} s"[:400])


def main() -> None:
    L3Agent().agent.run()
