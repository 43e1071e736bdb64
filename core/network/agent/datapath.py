"""One round of a hypervisor's data-path agent: what the agent loop calls.

``converge(db, host, vtep, driver)`` registers the host's VTEP (so the other
hypervisors' forwarding entries point at it), reads the host's desired state in
one transaction and hands it to the driver, which makes the host match. Calling
it again is always safe; the agent calls it at start, on each port or network
change it hears of, and every reconcile interval (a missed message only delays).

The agent builds its driver once from its node's configuration::

    driver = build_driver(cfg.network.datapath)         # mechanism.build_driver
    converge(db, cfg.compute_host, cfg.network.datapath.local_ip, driver)

``network.datapath.mechanism`` picks the Linux bridge driver or the Open vSwitch
one (:mod:`core.network.agent.openvswitch`); ``converge`` only knows the
:class:`DataPathDriver` protocol.
"""

from __future__ import annotations

from core.common.db import Database
from core.network.agent.desired import desired_state, register_vtep
from core.network.agent.driver import DataPathDriver, SyncResult


def converge(db: Database, host: str, vtep: str | None, driver: DataPathDriver) -> SyncResult:
    if vtep is not None:
        db.run_in_transaction(lambda s: register_vtep(s, host, vtep))
    desired = db.run_in_transaction(lambda s: desired_state(s, host))
    return driver.sync(desired)
