"""An Open vSwitch per fake hypervisor: ovsdb-server and ovs-vswitchd inside the
hypervisor's network namespace, with their database, sockets, pid and log files in a
directory of the test's (both daemons stopped at the end by their pid files).

The machine has no openvswitch kernel module, so bridges use the userspace datapath
(``netdev``). Userspace VXLAN sends through OVS's own routing, so a host's underlay
interface is a port of an OVS bridge ``br-ul`` that holds the VTEP address (the
host's setup, as the OVS userspace-tunneling guide lays it out; Haven's driver only
manages ``br-int``): :meth:`Switch.underlay`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from core.network.agent.ovsctl import OvsCtl

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


def have_ovs() -> bool:
    return bool(shutil.which("ovs-vswitchd")) and os.path.exists(SCHEMA)


def _sh(*argv: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120,
                          env=env)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr}")
    return done.stdout


@dataclass
class Switch:
    """One namespace's ovsdb-server and ovs-vswitchd (``rundir``: keep its path short,
    the unix socket paths must fit in 108 bytes)."""

    netns: str
    rundir: Path

    @property
    def db(self) -> str:
        return f"unix:{self.rundir / 'db.sock'}"

    def ctl(self) -> OvsCtl:
        return OvsCtl(self.db, str(self.rundir), self.netns)

    def vsctl(self, *args: str) -> str:
        return _sh("ovs-vsctl", f"--db={self.db}", *args)

    def ofctl(self, *args: str) -> str:
        return _sh("ovs-ofctl", *args, env={**os.environ, "OVS_RUNDIR": str(self.rundir)})

    def start(self) -> None:
        d = self.rundir
        _sh("ovsdb-tool", "create", str(d / "conf.db"), SCHEMA)
        common = ["-vconsole:off", "--detach", "--no-chdir"]
        _sh("ip", "netns", "exec", self.netns, "ovsdb-server", str(d / "conf.db"),
            f"--remote=punix:{d / 'db.sock'}", f"--pidfile={d / 'ovsdb-server.pid'}",
            f"--unixctl={d / 'ovsdb-server.ctl'}", f"--log-file={d / 'ovsdb-server.log'}",
            *common)
        self.vsctl("--no-wait", "init")
        _sh("env", f"OVS_RUNDIR={d}", "ip", "netns", "exec", self.netns, "ovs-vswitchd",
            self.db, f"--pidfile={d / 'ovs-vswitchd.pid'}",
            f"--unixctl={d / 'ovs-vswitchd.ctl'}", f"--log-file={d / 'ovs-vswitchd.log'}",
            *common)

    def underlay(self, device: str, address: str) -> None:
        """``device`` (up, in the namespace) a port of ``br-ul``, which holds the VTEP
        ``address`` (a /24): where userspace VXLAN finds its route."""
        self.vsctl("add-br", "br-ul", "--", "set", "bridge", "br-ul", "datapath_type=netdev",
                   "--", "add-port", "br-ul", device)
        _sh("ip", "-n", self.netns, "addr", "add", f"{address}/24", "dev", "br-ul")
        _sh("ip", "-n", self.netns, "link", "set", "br-ul", "up")

    def stop(self) -> None:
        """Stop the two daemons this test started (by their pid files)."""
        for daemon in ("ovs-vswitchd", "ovsdb-server"):
            pidfile = self.rundir / f"{daemon}.pid"
            with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
