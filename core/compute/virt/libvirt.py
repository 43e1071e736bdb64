"""The libvirt driver: domains for Haven instances, and nothing else.

Domains are named ``haven-<instance uuid>`` and carry the instance uuid as
their libvirt uuid, so the agent can tell its domains from anyone else's and
never touches the latter. Every operation is idempotent (starting a running
domain, destroying a missing one are no-ops): the agent may repeat any step
after a crash.

Disks are qcow2 overlays in ``<instances>/<uuid>/disk`` over a cached base
image; the serial console is appended to ``<instances>/<uuid>/console.log``.
NICs are tap devices (``type='ethernet'``) named after the port
(:func:`core.common.hostnet.tap_name`), with the port's MAC and the network's MTU:
libvirt makes the tap, the network agent plugs it into the network's bridge and
filters it. A config drive is a read-only IDE CD-ROM (the guests' kernels look
for a ``config-2`` labelled ISO9660 there, as on Nova's ``pc`` machines).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

import libvirt

LOG = logging.getLogger(__name__)
PREFIX = "haven-"
METADATA_NS = "https://haven.invalid/xmlns/instance/1.0"


class VirtError(Exception):
    """libvirt refused or failed an operation."""


@dataclass(frozen=True)
class Nic:
    """One guest NIC: the tap device libvirt makes, the port's MAC, the network's MTU."""

    tap: str
    mac_address: str
    mtu: int | None = None


@dataclass(frozen=True)
class DomainSpec:
    uuid: str
    name: str
    vcpus: int
    memory_mb: int
    disk_path: Path
    console_path: Path
    mac_address: str | None
    project_id: str
    cloud_id: str
    nics: tuple[Nic, ...] = ()  # when empty, ``mac_address`` alone makes a NIC (legacy)
    config_drive: Path | None = None  # the config-2 ISO, attached as a read-only cdrom


@dataclass(frozen=True)
class HostInfo:
    vcpus: int
    memory_mb: int


def domain_xml(spec: DomainSpec, virt_type: str) -> str:
    dom = ET.Element("domain", type=virt_type)
    ET.SubElement(dom, "name").text = PREFIX + spec.uuid
    ET.SubElement(dom, "uuid").text = spec.uuid
    meta = ET.SubElement(dom, "metadata")
    inst = ET.SubElement(meta, f"{{{METADATA_NS}}}instance")
    ET.SubElement(inst, f"{{{METADATA_NS}}}name").text = spec.name
    ET.SubElement(inst, f"{{{METADATA_NS}}}project").text = spec.project_id
    ET.SubElement(inst, f"{{{METADATA_NS}}}cloud").text = spec.cloud_id
    ET.SubElement(dom, "memory", unit="MiB").text = str(spec.memory_mb)
    ET.SubElement(dom, "vcpu").text = str(spec.vcpus)
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_el, "boot", dev="hd")
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(dom, "clock", offset="utc")
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = "restart"
    ET.SubElement(dom, "on_crash").text = "destroy"
    devices = ET.SubElement(dom, "devices")
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="qcow2", cache="none")
    ET.SubElement(disk, "source", file=str(spec.disk_path))
    ET.SubElement(disk, "target", dev="vda", bus="virtio")
    if spec.config_drive is not None:
        cdrom = ET.SubElement(devices, "disk", type="file", device="cdrom")
        ET.SubElement(cdrom, "driver", name="qemu", type="raw")
        ET.SubElement(cdrom, "source", file=str(spec.config_drive))
        ET.SubElement(cdrom, "target", dev="hdd", bus="ide")  # Nova's config drive device
        ET.SubElement(cdrom, "readonly")
    for nic_spec in spec.nics:
        nic = ET.SubElement(devices, "interface", type="ethernet")
        ET.SubElement(nic, "mac", address=nic_spec.mac_address)
        # managed='no' would make libvirt expect an existing tap: it makes this one
        ET.SubElement(nic, "target", dev=nic_spec.tap)
        ET.SubElement(nic, "model", type="virtio")
        if nic_spec.mtu:
            ET.SubElement(nic, "mtu", size=str(nic_spec.mtu))
    if not spec.nics and spec.mac_address:
        nic = ET.SubElement(devices, "interface", type="ethernet")
        ET.SubElement(nic, "mac", address=spec.mac_address)
        ET.SubElement(nic, "model", type="virtio")
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(spec.console_path), append="on")
    ET.SubElement(serial, "target", port="0")
    console = ET.SubElement(devices, "console", type="file")
    ET.SubElement(console, "source", path=str(spec.console_path), append="on")
    ET.SubElement(console, "target", type="serial", port="0")
    ET.SubElement(devices, "memballoon", model="none")
    ET.register_namespace("haven", METADATA_NS)
    return ET.tostring(dom, encoding="unicode")


class LibvirtDriver:
    """A libvirt connection per thread, each reopened when it breaks (libvirtd
    restarted).

    Per thread, not one shared: libvirtd serves at most ``max_client_requests`` (5)
    calls of one connection at a time, and a guest start holds its call for the whole
    start. With the agent's eight build workers on one connection, an evacuation's
    starts ran five at a time and every define queued behind them (2.3 s measured)."""

    def __init__(self, uri: str, virt_type: str = "qemu", cloud_id: str | None = None) -> None:
        self.uri = uri
        self.virt_type = virt_type
        self.cloud_id = cloud_id
        self._local = threading.local()

    def conn(self) -> libvirt.virConnect:
        """This thread's connection."""
        current: libvirt.virConnect | None = getattr(self._local, "conn", None)
        if current is not None:
            try:
                if current.isAlive():
                    return current
            except libvirt.libvirtError:
                pass
            LOG.warning("libvirt connection to %s lost; reconnecting", self.uri)
        try:
            self._local.conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise VirtError(f"cannot connect to libvirt at {self.uri}: {exc}") from exc
        return self._local.conn

    def _lookup(self, uuid: str) -> libvirt.virDomain | None:
        """The domain with ``uuid`` if it is this cloud's (others are never touched)."""
        try:
            dom = self.conn().lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise VirtError(str(exc)) from exc
        if not dom.name().startswith(PREFIX) or self._cloud_of(dom) != self.cloud_id:
            return None
        return dom

    def host_info(self) -> HostInfo:
        _model, memory_mb, cpus, *_ = self.conn().getInfo()
        return HostInfo(vcpus=int(cpus), memory_mb=int(memory_mb))

    def domains(self) -> dict[str, bool]:
        """This cloud's domains on this host: uuid -> running.

        Only domains stamped with this driver's cloud id count: another Haven
        sharing the libvirtd, or anything not made by Haven, is invisible here.
        """
        out = {}
        for dom in self.conn().listAllDomains():
            if dom.name().startswith(PREFIX) and self._cloud_of(dom) == self.cloud_id:
                out[dom.UUIDString()] = bool(dom.isActive())
        return out

    @staticmethod
    def _cloud_of(dom: libvirt.virDomain) -> str | None:
        try:
            xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)
        except libvirt.libvirtError:
            return None
        node = ET.fromstring(xml).find(f"{{{METADATA_NS}}}cloud")
        if node is None:
            node = ET.fromstring(xml).find("cloud")
        return node.text if node is not None else None

    def is_running(self, uuid: str) -> bool:
        dom = self._lookup(uuid)
        return bool(dom is not None and dom.isActive())

    def exists(self, uuid: str) -> bool:
        return self._lookup(uuid) is not None

    def define(self, spec: DomainSpec) -> None:
        try:
            self.conn().defineXML(domain_xml(spec, self.virt_type))
        except libvirt.libvirtError as exc:
            raise VirtError(f"cannot define {spec.uuid}: {exc}") from exc

    def start(self, uuid: str, nice: int = 0, paused: bool = False) -> None:
        """Start the domain; with ``nice``, its QEMU is started paused, reniced, then
        resumed, so the guest never runs at the host services' priority. A domain
        left paused (an agent that died between the two) is resumed, unless
        ``paused``: then it is started (or left) paused, its taps made, for
        :meth:`resume` once its ports are plugged (Nova's vif plugging)."""
        dom = self._lookup(uuid)
        if dom is None:
            raise VirtError(f"domain {uuid} is not defined")
        try:
            if not dom.isActive():
                self._create(dom, paused=bool(nice or paused))
            if nice:
                self.lower_priority(uuid, nice)
            if not paused and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
        except libvirt.libvirtError as exc:
            raise VirtError(f"cannot start {uuid}: {exc}") from exc

    def _create(self, dom: libvirt.virDomain, paused: bool) -> None:
        if paused and self.uri.startswith("test:"):
            # libvirt's test driver (the agent's tests) has no START_PAUSED; it runs no
            # guest either, so started-then-suspended is the same state there
            dom.create()
            dom.suspend()
            return
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)

    def resume(self, uuid: str) -> None:
        """Let a paused domain run (no-op when it runs already)."""
        dom = self._lookup(uuid)
        if dom is None or not dom.isActive():
            raise VirtError(f"domain {uuid} is not running: cannot resume it")
        try:
            if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
        except libvirt.libvirtError as exc:
            raise VirtError(f"cannot resume {uuid}: {exc}") from exc

    def is_paused(self, uuid: str) -> bool:
        dom = self._lookup(uuid)
        return bool(dom is not None and dom.isActive()
                    and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED)

    def xml(self, uuid: str) -> str:
        """The domain's live XML (what libvirt made of the definition)."""
        dom = self._lookup(uuid)
        if dom is None:
            raise VirtError(f"domain {uuid} is not defined")
        return str(dom.XMLDesc(0))

    def lower_priority(self, uuid: str, nice: int, run_dir: Path = Path("/run/libvirt/qemu"),
                       ) -> int:
        """Renice the domain's QEMU to ``nice``: every thread (vCPUs included) and, when
        the kernel groups processes by session (``sched_autogroup``, on by default in
        Debian), QEMU's own session group too; returns how many threads. Host services
        (this agent, libvirtd, the database, the cluster) then keep their CPU when a
        hypervisor starts many guests at once, as after an evacuation: without cgroups
        to reserve host CPU, niceness is the lever.

        The group matters more than the threads: libvirt starts each QEMU in a session
        of its own, and with autogroup the CPU is first shared equally between sessions,
        nice values only counting inside one. Reniced threads alone changed nothing:
        twenty booting guests were twenty equal shares against libvirtd's one, and
        each new guest's start took longer than the last (0.4 s to 1.6 s for ten, one
        after the other; 0.4 s to 0.8 s with the groups reniced). A QEMU that is not
        its session's only process shares its group with others, which are left alone.

        A guest that is not running, or a pid file this process cannot read, is left
        alone."""
        try:
            pid = int((run_dir / f"{PREFIX}{uuid}.pid").read_text().strip())
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except (OSError, ValueError):
            return 0
        done = 0
        for tid in tids:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
                done += 1
            except OSError:
                continue
        lower_session_group(pid, nice)
        return done

    def destroy(self, uuid: str) -> None:
        """Force off (no-op when already off or missing)."""
        dom = self._lookup(uuid)
        if dom is None or not dom.isActive():
            return
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if dom.isActive():
                raise VirtError(f"cannot destroy {uuid}: {exc}") from exc

    def undefine(self, uuid: str) -> None:
        dom = self._lookup(uuid)
        if dom is None:
            return
        self.destroy(uuid)
        try:
            dom.undefine()
        except libvirt.libvirtError as exc:
            if self._lookup(uuid) is not None:
                raise VirtError(f"cannot undefine {uuid}: {exc}") from exc

    def shutdown(self, uuid: str, timeout: float) -> None:
        """ACPI power-off, then force off after ``timeout`` seconds."""
        dom = self._lookup(uuid)
        if dom is None or not dom.isActive():
            return
        if timeout > 0:
            with contextlib.suppress(libvirt.libvirtError):
                dom.shutdown()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not dom.isActive():
                    return
                time.sleep(0.5)
            LOG.info("%s ignored ACPI shutdown for %ss: forcing it off", uuid, timeout)
        self.destroy(uuid)

    def reboot(self, uuid: str, hard: bool, nice: int = 0) -> None:
        """A guest reboot (same QEMU, keeps its niceness), or off and on again for a
        hard one, or when the guest does not take the request."""
        dom = self._lookup(uuid)
        if dom is None:
            raise VirtError(f"domain {uuid} is not defined")
        if hard or not dom.isActive():
            self.destroy(uuid)
            self.start(uuid, nice)
            return
        try:
            dom.reboot(libvirt.VIR_DOMAIN_REBOOT_DEFAULT)
        except libvirt.libvirtError:
            self.destroy(uuid)
            self.start(uuid, nice)


def lower_session_group(pid: int, nice: int) -> bool:
    """Set the scheduler autogroup nice of ``pid``'s session if ``pid`` is the only
    process in it (libvirt's QEMUs are: it forks them through a child that calls
    ``setsid`` and exits), so the group renices nobody else. False when no autogroup
    applies, the session is shared, or the process is gone."""
    if autogroup_nice(pid) is None:
        return False
    try:
        sid = os.getsid(pid)
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != pid and _session_of(entry) == sid:
                return False
        Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")
        return True
    except OSError:
        return False


def autogroup_nice(pid: int) -> int | None:
    """The nice of ``pid``'s scheduler autogroup, or None when no autogroup applies: the
    kernel has none, or the process sits in a CPU cgroup of its own (a container, a
    systemd slice), where ``/proc/PID/autogroup`` reads empty and session groups do
    not share the CPU."""
    try:
        return parse_autogroup(Path(f"/proc/{pid}/autogroup").read_text())
    except OSError:
        return None


def parse_autogroup(text: str) -> int | None:
    """The nice in a ``/proc/PID/autogroup`` line (``/autogroup-86 nice 0``); None for
    the empty file of a process outside the root CPU cgroup (seen in CI containers)."""
    _, sep, nice = text.partition(" nice ")
    try:
        return int(nice) if sep else None
    except ValueError:
        return None


def _session_of(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[3])  # field 6: session
    except (OSError, IndexError, ValueError):
        return None


def read_console(path: Path, lines: int | None, max_bytes: int = 1 << 20) -> str:
    """The last ``lines`` lines (all when None) of a console log, at most ``max_bytes``."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, size - max_bytes))
        text = handle.read().decode("utf-8", errors="replace")
    if lines is not None:
        text = "\n".join(text.splitlines()[-lines:]) + ("\n" if lines else "")
    return text


def disk_free_gb(path: Path) -> int:
    st = os.statvfs(path)
    return int(st.f_bavail * st.f_frsize // (1 << 30))
