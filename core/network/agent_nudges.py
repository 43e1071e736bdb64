"""Nudging the hypervisors' network agents after a change their data paths carry.

Each hypervisor's network agent (:mod:`core.network.agent.agent`) converges to the
database every ``network.agent_interval`` seconds and consumes its host's bus topic
(:func:`topic`), a message on which only starts its next round sooner. The network
API sends one after a committed change that concerns a host's data path, so a new
security group rule reaches a running VM within a second instead of an interval:

* **which hosts**: the functions below, reading the request's own transaction
  (before a delete, so the rows that go still say where they were). What an
  agent's round reads for its host is the model: its bound ports (taps, filters,
  DHCP entries); on its VXLAN networks, the other hosts' bound ports (forwarding
  entries); the rules of its ports' groups, and the addresses of every member of
  a group those rules name as their remote group; its networks' DHCP subnets.
  Floating IPs and routers are not the network agent's (they live in the router
  namespaces under Pacemaker), so they nudge nobody;
* **when**: :func:`after_commit` holds the hosts on the request's session and hands
  them to the :class:`Nudger` only once that session committed. A rolled-back
  request nudges nobody; one nudged before its commit could be read by a round
  that does not see the change yet, which then sleeps a whole interval;
* **who hears them**: each agent consumes its host's topic through :func:`consume`
  (``haven network-agent`` on the cloud's bus, the all-in-one on its local bus). A
  :class:`Nudger` told which hosts have an agent on its bus (``reachable``: the
  all-in-one's one host) sends nothing to others, whose messages would otherwise
  wait on a queue nobody reads;
* **never the request's failure**: the :class:`Nudger` sends on a thread of its
  own, so a bus that is down (an AMQP cast retries for up to 30 s) neither slows
  nor fails the request; a nudge that cannot be sent is logged, and the agent's
  next periodic round does the work all the same (the database stays the truth).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

import bottle
from sqlalchemy import ColumnElement, event, select
from sqlalchemy.orm import Session, SessionTransaction

from core.common.bus import Bus, BusError, Subscription
from core.common.wsgi import session
from core.network.models import Port
from core.network.secgroup_models import PortSecurityGroup, SecurityGroupRule
from core.network.segment_models import NetworkSegment

if TYPE_CHECKING:
    from core.network.agent.agent import NetworkAgent

LOG = logging.getLogger(__name__)

ENVIRON_KEY = "haven.network.nudger"  # the app's Nudger, in each request's environ
PENDING_KEY = "haven.network.nudge_hosts"  # Session.info: the hosts to nudge on commit


def topic(host: str) -> str:
    """The bus topic ``host``'s network agent consumes (the agent and the API's one
    name for it)."""
    return f"network-agent.{host}"


def consume(bus: Bus, agent: NetworkAgent) -> Subscription:
    """Subscribe ``agent`` to its host's topic: a message only wakes its loop for its
    next round, whatever it says (the database stays the truth). How every network
    agent hears its nudges, ``haven network-agent``'s and the all-in-one's."""
    return bus.subscribe(topic(agent.host), lambda _message: agent.nudge())


# ---- which hosts -----------------------------------------------------------------------
def _bound_hosts(sess: Session, where: ColumnElement[bool]) -> set[str]:
    """The hosts of the bound ports ``where`` says."""
    return set(sess.scalars(select(Port.host_id).where(Port.host_id != "", where).distinct()))


def network_hosts(sess: Session, network_id: str) -> set[str]:
    """Hosts with a bound port on the network: each serves the network's DHCP subnets
    to its own ports (a subnet made or deleted changes their dnsmasq)."""
    return _bound_hosts(sess, Port.network_id == network_id)


def tunnel_peer_hosts(sess: Session, network_id: str) -> set[str]:
    """Hosts with a bound port on the network if it is a VXLAN one: their forwarding
    entries say at which host each port of the network is (flat and VLAN networks
    learn that on the wire)."""
    vxlan = sess.scalar(select(NetworkSegment.network_id).where(
        NetworkSegment.network_id == network_id, NetworkSegment.network_type == "vxlan"))
    return network_hosts(sess, network_id) if vxlan is not None else set()


def rule_hosts(sess: Session, group_id: str) -> set[str]:
    """Hosts with a bound port in the group: the group's rules are in their filters
    (a rule made or deleted changes them)."""
    members = select(PortSecurityGroup.port_id).where(
        PortSecurityGroup.security_group_id == group_id)
    return _bound_hosts(sess, Port.id.in_(members))


def watcher_hosts(sess: Session, group_ids: Collection[str]) -> set[str]:
    """Hosts with a bound port in a group having a rule whose remote group is one of
    these: the members' addresses of these groups are in their filters (a port joining
    or leaving them, or changing address, changes them). A ``default`` group, whose
    rules name itself, watches its own members."""
    if not group_ids:
        return set()
    watching = select(SecurityGroupRule.security_group_id).where(
        SecurityGroupRule.remote_group_id.in_(group_ids))
    members = select(PortSecurityGroup.port_id).where(
        PortSecurityGroup.security_group_id.in_(watching))
    return _bound_hosts(sess, Port.id.in_(members))


def port_hosts(sess: Session, port: Port) -> set[str]:
    """Hosts whose data path carries something of ``port`` as the session sees it now
    (call it before and after a change, and before a delete): its own host (tap,
    filter, DHCP entry), its VXLAN network's other hosts (their forwarding entry for
    it) and the hosts watching its groups (its addresses in a remote group). An
    unbound port is only in the last (a remote group's members are all its ports)."""
    groups = list(sess.scalars(select(PortSecurityGroup.security_group_id).where(
        PortSecurityGroup.port_id == port.id)))
    hosts = watcher_hosts(sess, groups)
    if port.host_id:
        hosts |= {port.host_id} | tunnel_peer_hosts(sess, port.network_id)
    return hosts


# ---- when, and how ---------------------------------------------------------------------
class Nudger:
    """Sends nudges to the agents of hosts on its own thread (see the module docstring).

    Hosts queued while a send is under way are merged: one nudge per host then covers
    every change committed before it was sent. With no bus (an API that no agent can
    hear) nothing is sent; with ``reachable``, only those hosts are nudged (the others
    have no agent on this bus: the all-in-one's local bus carries its own host's only).
    """

    def __init__(self, bus: Bus | None, reachable: Collection[str] | None = None) -> None:
        self.bus = bus
        self.reachable = None if reachable is None else frozenset(reachable)
        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._sending = False
        self._thread: threading.Thread | None = None

    def prepare(self) -> None:
        """The app's per-request hook: lets :func:`after_commit` find this nudger."""
        bottle.request.environ[ENVIRON_KEY] = self

    def nudge(self, hosts: Iterable[str]) -> None:
        """Queue a nudge for each host; returns at once."""
        wanted = {h for h in hosts if h and (self.reachable is None or h in self.reachable)}
        if self.bus is None or not wanted:
            return
        with self._cond:
            self._pending |= wanted
            if self._thread is None or not self._thread.is_alive():
                # started here, not in __init__: gunicorn builds the app in each worker
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="network-agent-nudges")
                self._thread.start()
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Whether every queued nudge was handed to the bus within ``timeout`` seconds
        (for tests: what was queued before has then been sent or given up)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._sending,
                                       timeout)

    def _run(self) -> None:
        assert self.bus is not None
        while True:
            with self._cond:
                self._sending = False
                self._cond.notify_all()
                self._cond.wait_for(lambda: bool(self._pending))
                hosts, self._pending = sorted(self._pending), set()
                self._sending = True
            for host in hosts:
                self._send(self.bus, host)

    @staticmethod
    def _send(bus: Bus, host: str) -> None:
        try:
            bus.cast(topic(host), {"host": host})
        except BusError as exc:
            LOG.warning("could not nudge the network agent of %s (its next round will "
                        "do the work): %s", host, exc)
        except Exception:  # the sender thread must outlive any one failure
            LOG.exception("could not nudge the network agent of %s", host)


def send_now(bus: Bus, hosts: Iterable[str]) -> None:
    """Nudge each host's agent on ``bus`` now, on the caller's thread: for a process
    that ends right after its change is committed (an OCF action binding a router's
    ports), where a sender thread would die with it. Like :class:`Nudger`, a nudge
    that cannot be sent is logged, never raised."""
    for host in sorted({h for h in hosts if h}):
        Nudger._send(bus, host)


def after_commit(hosts: Iterable[str]) -> None:
    """Nudge these hosts' agents once the current request's transaction commits (never
    if it rolls back). Outside an app with a :class:`Nudger` (or without a bus) a no-op."""
    nudger = bottle.request.environ.get(ENVIRON_KEY)
    if not isinstance(nudger, Nudger) or nudger.bus is None:
        return
    sess = session()
    pending: set[str] | None = sess.info.get(PENDING_KEY)
    if pending is None:
        pending = sess.info[PENDING_KEY] = set()

        def committed(s: Session) -> None:
            # after_commit also fires when a savepoint (begin_nested) is released: the
            # transaction that matters is the outermost one
            if s.get_nested_transaction() is None:
                try:
                    nudger.nudge(s.info.pop(PENDING_KEY, ()))
                except Exception:  # committed: the request must not fail now
                    LOG.exception("could not queue the network agents' nudges")

        def rolled_back(s: Session, transaction: SessionTransaction) -> None:
            if transaction.parent is None:  # a savepoint's rollback keeps the rest
                s.info.pop(PENDING_KEY, None)

        event.listen(sess, "after_commit", committed)
        event.listen(sess, "after_soft_rollback", rolled_back)
    pending.update(h for h in hosts if h)
