"""The evacuation controller as a process: ``haven evacuator run``.

Pacemaker runs exactly one (a primitive, ``ocf:haven:haven-evacuator``); after a
failover a new one starts elsewhere and resumes from the records. The loop only
paces ``do_one_iteration()``; all decisions are the controller's. A failed look
at the world (crm_mon busy, the database failing over) is logged and the next
iteration tries again: nothing was decided on half a view.

Each iteration touches a heartbeat file, which the OCF agent's deep monitor
checks: a controller stuck in a call is restarted by Pacemaker. Between iterations
it sleeps ``evacuator.interval``, or less when Pacemaker's alert agent wakes it on a
fence (ha/evacuator/wake.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from core.common.clients import ServiceClients
from core.common.config import HavenConfig
from core.common.db import Database
from ha.evacuator.base import Policy
from ha.evacuator.controller import Controller
from ha.evacuator.real import RealEnv
from ha.evacuator.wake import Pacer, WakeListener

LOG = logging.getLogger("haven.evacuator")


def policy_from(cfg: HavenConfig) -> Policy:
    e = cfg.evacuator
    return Policy(max_concurrent_rebuilds=e.max_concurrent_rebuilds,
                  max_failed_share=e.max_failed_share, retry_base=e.retry_base,
                  retry_max=e.retry_max, max_attempts=e.max_attempts,
                  rebuild_timeout=e.rebuild_timeout)


def heartbeat_path(cfg: HavenConfig) -> Path:
    return cfg.state_path / "evacuator.heartbeat"


def run(cfg: HavenConfig, db: Database, pacer: Pacer) -> None:
    """Iterate until ``pacer.stop()``."""
    env = RealEnv(cfg, db, ServiceClients(cfg))
    controller = Controller(env, policy_from(cfg))
    beat = heartbeat_path(cfg)
    beat.parent.mkdir(parents=True, exist_ok=True)
    listener = WakeListener(pacer)
    woken = listener.start()
    LOG.info("evacuation controller started (every %.1f s%s)", cfg.evacuator.interval,
             ", and when Pacemaker reports a fence" if woken else "")
    try:
        _loop(controller, beat, pacer)
    finally:
        listener.close()


def _loop(controller: Controller, beat: Path, pacer: Pacer) -> None:
    failing = False
    while not pacer.stopping:
        started = time.monotonic()
        try:
            controller.do_one_iteration()
            if failing:
                LOG.info("the controller sees the world again")
            failing = False
        except Exception as exc:  # one bad look; the next iteration looks again
            if not failing:
                LOG.exception("iteration failed (retrying every interval): %s", exc)
            failing = True
        beat.touch()
        if pacer.wait(started) and not pacer.stopping:
            LOG.info("woken by a cluster event (Pacemaker alert)")
