"""One dnsmasq per network on this hypervisor, kept as the agent says.

:meth:`DnsmasqSupervisor.sync` is the agent's one call: given every network this
host carries (:class:`~core.network.agent.dhcp.DhcpNetwork`), it leaves each
network's dnsmasq answering exactly that network's ports here, and stops the
ones of networks no longer given. It is safe to repeat and converges from any
state, like Neutron's agents reconcile on restart:

* new network, or a dnsmasq that died (or its pid file names another process):
  write the files, start it;
* ports added, hostnames or options changed: rewrite the file, SIGHUP (dnsmasq
  re-reads ``dhcp-hostsfile`` and ``dhcp-optsfile``: the other guests keep their
  server);
* a port removed or its address changed, or the main configuration changed
  (interface, subnets, lease time): restart, because dnsmasq keeps leases in
  memory across a HUP and the old one would keep the address from its new port;
* a network no longer given: stop it, remove its files.

State is only the files under ``state_dir/<network id>/``, so an agent that
restarts finds its dnsmasqs again through their pid files (checked against
``/proc/<pid>/cmdline``, so a reused pid is never signalled).

A network whose description is refused (:class:`DhcpConfigError`) gets no
dnsmasq rather than a wrong one; the others are still served, and the refusal
is reported in :class:`SyncResult`.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.common.files import write_private
from core.network.agent.dhcp import DhcpConfigError, DhcpNetwork, RenderedConfig, render

LOG = logging.getLogger(__name__)

DNSMASQ = "/usr/sbin/dnsmasq"
DEFAULT_USER = "dnsmasq"  # Debian's dnsmasq-base creates it
_NETWORK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_STOP_WAIT_SECONDS = 10.0


class DhcpStartError(RuntimeError):
    """dnsmasq refused to start for a network (its exit status and message)."""


class DhcpStateDirError(RuntimeError):
    """dnsmasq's user could not read its files under the state directory: a dnsmasq
    started there would run, read no hosts and silently answer nobody."""


@dataclass
class SyncResult:
    """What one :meth:`DnsmasqSupervisor.sync` did, per network id."""

    started: list[str] = field(default_factory=list)
    reloaded: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # network id -> why


class DnsmasqSupervisor:
    """The dnsmasqs of one hypervisor.

    ``command_prefix`` runs dnsmasq elsewhere than in the agent's own network
    namespace (``("ip", "netns", "exec", name)``; the tests' hypervisors are
    namespaces). ``namespace_of``, if given, names the network namespace each
    network's dnsmasq runs in (the network agent's service namespace, where the
    DHCP port's address lives); it comes after ``command_prefix``. ``log_dhcp``
    makes each dnsmasq log its DHCP exchanges to ``<network dir>/log``.
    """

    def __init__(self, state_dir: str | os.PathLike[str], *, user: str = DEFAULT_USER,
                 binary: str = DNSMASQ, command_prefix: Sequence[str] = (),
                 log_dhcp: bool = False,
                 namespace_of: Callable[[str], str] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.user = user
        entry = pwd.getpwnam(user)  # KeyError: no such user, refuse early
        self._gid = entry.pw_gid
        self.group = grp.getgrgid(self._gid).gr_name
        self.binary = binary
        self.command_prefix = tuple(command_prefix)
        self.log_dhcp = log_dhcp
        self.namespace_of = namespace_of

    # --- paths -------------------------------------------------------------------------
    def network_dir(self, network_id: str) -> Path:
        if not _NETWORK_ID.match(network_id):
            raise DhcpConfigError(f"network id {network_id!r} is not a safe name")
        return self.state_dir / network_id

    def log_path(self, network_id: str) -> Path:
        return self.network_dir(network_id) / "log"

    def _render(self, net: DhcpNetwork) -> RenderedConfig:
        d = self.network_dir(net.network_id)
        return render(net, hosts_path=str(d / "hosts"), opts_path=str(d / "opts"),
                      pid_path=str(d / "pid"), user=self.user, group=self.group,
                      log_path=str(d / "log") if self.log_dhcp else None)

    # --- the agent's call ---------------------------------------------------------------
    def sync(self, desired: Iterable[DhcpNetwork]) -> SyncResult:
        """Make the running dnsmasqs match ``desired`` (see the module docstring)."""
        result = SyncResult()
        wanted: dict[str, DhcpNetwork] = {}
        for net in desired:
            if net.network_id in wanted:
                result.refused[net.network_id] = "network given twice"
                continue
            wanted[net.network_id] = net
        self.state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        self._check_reachable()
        for network_id in sorted(self._managed() - set(wanted)):
            self.stop(network_id)
            result.stopped.append(network_id)
        for network_id, net in sorted(wanted.items()):
            try:
                rendered = self._render(net)
            except DhcpConfigError as exc:
                LOG.error("network %s: DHCP refused: %s", network_id, exc)
                result.refused[network_id] = str(exc)
                if network_id in self._managed():
                    self.stop(network_id)  # a wrong old answer is worse than none
                    result.stopped.append(network_id)
                continue
            try:
                action = self._converge(network_id, rendered)
            except DhcpStartError as exc:
                LOG.error("network %s: %s", network_id, exc)
                result.refused[network_id] = str(exc)
                continue
            getattr(result, action).append(network_id)
        return result

    def stop_all(self) -> None:
        for network_id in sorted(self._managed()):
            self.stop(network_id)

    # --- one network ---------------------------------------------------------------------
    def _converge(self, network_id: str, rendered: RenderedConfig) -> str:
        d = self.network_dir(network_id)
        pid = self.running_pid(network_id)
        if pid is None:
            d.mkdir(mode=0o750, exist_ok=True)
            os.chown(d, -1, self._gid)
            self._write_all(d, rendered)
            self._start(network_id)
            return "started"
        if _read(d / "dnsmasq.conf") != rendered.conf or _withdrawn(
                _read(d / "hosts") or "", rendered.hosts_for):
            self.stop(network_id, remove=False)
            self._write_all(d, rendered)
            self._start(network_id)
            return "restarted"
        changed = False
        for name, text in (("hosts", rendered.hosts), ("opts", rendered.opts)):
            if _read(d / name) != text:
                self._write(d / name, text)
                changed = True
        if changed:
            os.kill(pid, signal.SIGHUP)
            return "reloaded"
        return "unchanged"

    def _write(self, path: Path, text: str) -> None:
        # Read by dnsmasq after it dropped root (on SIGHUP): its group may read.
        write_private(path, text, mode=0o640, owner=(-1, self._gid))

    def _write_all(self, d: Path, rendered: RenderedConfig) -> None:
        self._write(d / "hosts", rendered.hosts)
        self._write(d / "opts", rendered.opts)
        write_private(d / "dnsmasq.conf", rendered.conf, mode=0o640, owner=(-1, self._gid))

    def _start(self, network_id: str) -> None:
        d = self.network_dir(network_id)
        with contextlib.suppress(FileNotFoundError):
            (d / "pid").unlink()
        # dnsmasq's parent exits only once the daemon has bound its sockets (or
        # failed to: then with the reason on stderr), so its status is the answer.
        inside = (("ip", "netns", "exec", self.namespace_of(network_id))
                  if self.namespace_of is not None else ())
        done = subprocess.run([*self.command_prefix, *inside, self.binary,
                               f"--conf-file={d / 'dnsmasq.conf'}"],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise DhcpStartError(f"dnsmasq for network {network_id} exited "
                                 f"{done.returncode}: {done.stderr.strip()}")
        if self.running_pid(network_id) is None:
            raise DhcpStartError(f"dnsmasq for network {network_id} started but is "
                                 "not running")
        LOG.info("network %s: dnsmasq started", network_id)

    def stop(self, network_id: str, *, remove: bool = True) -> None:
        """Stop the network's dnsmasq (a no-op when none runs) and, unless told
        otherwise, remove its files."""
        d = self.network_dir(network_id)
        pid = self.running_pid(network_id)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + _STOP_WAIT_SECONDS
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                LOG.warning("network %s: dnsmasq %d ignored SIGTERM, killing", network_id,
                            pid)
                os.kill(pid, signal.SIGKILL)
                while _alive(pid):
                    time.sleep(0.05)
        if remove:
            shutil.rmtree(d, ignore_errors=True)

    def running_pid(self, network_id: str) -> int | None:
        """The pid of the network's dnsmasq if it runs, else None. A pid file that
        names a dead process or another program's is not believed."""
        d = self.network_dir(network_id)
        try:
            pid = int((d / "pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            return None
        if f"--conf-file={d / 'dnsmasq.conf'}".encode() not in cmdline:
            return None
        return pid if _alive(pid) else None

    def _check_reachable(self) -> None:
        """Every directory down to ``state_dir`` must let dnsmasq's user through
        (it re-reads the hosts file after dropping root)."""
        uid = pwd.getpwnam(self.user).pw_uid
        for directory in [self.state_dir.resolve(), *self.state_dir.resolve().parents]:
            st = directory.stat()
            if st.st_uid == uid:
                ok = bool(st.st_mode & 0o100)
            elif st.st_gid == self._gid:
                ok = bool(st.st_mode & 0o010)
            else:
                ok = bool(st.st_mode & 0o001)
            if not ok:
                raise DhcpStateDirError(f"{directory} (mode {st.st_mode & 0o777:o}) does not "
                                        f"let user {self.user} reach {self.state_dir}")

    def _managed(self) -> set[str]:
        if not self.state_dir.is_dir():
            return set()
        return {p.name for p in self.state_dir.iterdir()
                if p.is_dir() and _NETWORK_ID.match(p.name)}


def _withdrawn(old_hosts: str, new: dict[str, str]) -> bool:
    """Whether a MAC served so far loses its address. dnsmasq keeps its leases in
    memory across a HUP: the old MAC's lease would keep the address from the port
    it now belongs to (dnsmasq: "not using configured address ... because it is
    leased to ..."), so that change is a restart, which forgets them. Guests that
    keep their ports lose nothing: an authoritative dnsmasq ACKs their renewal of
    a static address it has no lease for."""
    for line in old_hosts.splitlines():
        fields = line.split(",")
        if len(fields) < 2 or new.get(fields[0]) != fields[1]:
            return True  # a line not ours to read: restart, never guess
    return False


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _alive(pid: int) -> bool:
    """Running, and not a zombie left unreaped by a parent that is not init."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")
