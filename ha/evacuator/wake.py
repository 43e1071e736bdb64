"""Wake the evacuation controller the moment Pacemaker reports a fence.

The controller looks at the cluster every ``evacuator.interval`` seconds. Between two
looks, a host that was lost and fenced waited for up to an interval plus one slow
iteration: measured in the evacuation benchmark, the fence completed 1.2 s before the
controller saw it (of 12 s from power loss to 20 guests active). Pacemaker runs its
alert agents on every node at each cluster event; Haven's (``haven-evacuator-wake``,
loaded by ``haven cluster bootstrap``) sends one datagram here when the event is a
fence, and the controller looks at once.

The datagram only says "look now": the controller still decides from ``crm_mon`` and
the fence history, so a stray or forged wake-up costs one iteration and nothing
else. The socket is in the abstract namespace, which belongs to the network
namespace (one per host, one per lab node): no file to clean up, no permission to get
wrong for the ``hacluster`` user that runs alert agents.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time

LOG = logging.getLogger("haven.evacuator")

DEFAULT_NAME = "haven-evacuator-wake"
ENV_NAME = "HAVEN_EVACUATOR_WAKE"  # another name: a second cloud on one host, or a test
# CRM_alert_kind values worth a look: a fence's result, which is what the controller
# waits for. Not "node" (a node lost): the controller can do nothing before the fence,
# and a look then (crm_mon, the fence history, the database) only competes for the CPU
# with Pacemaker scheduling that fence. (Pacemaker's controller sometimes waits a
# whole second before scheduling it, when its own CIB updates for the lost node are
# still pending; seen in 4 runs of 6, with and without that look.)
WAKE_KINDS = frozenset({"fencing"})


def wake_address() -> bytes:
    """The abstract socket address (a leading NUL byte, then the name)."""
    return b"\0" + os.environ.get(ENV_NAME, DEFAULT_NAME).encode()


def send_wake() -> bool:
    """One datagram to the controller; False when none listens here (the controller
    runs on another node: every node's alert agent sends, one is heard)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(b"wake", wake_address())
        except OSError:
            return False
    return True


class Pacer:
    """Paces the controller's loop: the next iteration starts ``interval`` seconds after
    the last one started, or as soon as it is woken (an alert, or shutdown). A wake-up
    during an iteration is kept, so the iteration after it sees the news."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.stopping = False
        self._event = threading.Event()

    def wake(self) -> None:
        self._event.set()

    def stop(self) -> None:
        self.stopping = True
        self._event.set()

    def wait(self, started: float) -> bool:
        """Sleep until the next iteration is due; True when woken early."""
        woken = self._event.wait(max(0.0, self.interval - (time.monotonic() - started)))
        self._event.clear()
        return woken


class WakeListener:
    """Receives wake-ups on the abstract socket and wakes the pacer."""

    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer
        self._closing = False
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._thread = threading.Thread(target=self._run, name="evacuator-wake", daemon=True)

    def start(self) -> bool:
        """Listen; False (and polling only) when the address is taken, as by a second
        controller in one network namespace, which Pacemaker does not run."""
        try:
            self._sock.bind(wake_address())
        except OSError as exc:
            LOG.warning("cannot listen for Pacemaker's wake-ups (%s); polling only", exc)
            self._sock.close()
            return False
        self._thread.start()
        return True

    def close(self) -> None:
        """Stop listening; shutdown wakes the receiving thread (close alone leaves it
        blocked), which then ends."""
        self._closing = True
        with contextlib.suppress(OSError):  # never bound, or already closed
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def _run(self) -> None:
        while True:
            try:
                self._sock.recv(64)
            except OSError:
                return
            if self._closing:
                return
            self.pacer.wake()
