#!/usr/bin/env python3
"""Build Haven's tiny test guest: a self-booting qcow2 disk (Debian kernel + busybox initramfs).

Why this exists: Haven's tests and demos need a *real* guest that boots in seconds under TCG
(no KVM here), proves it booted (a console marker) and proves its own disk persists across
boots (a token it keeps in the last MiB of that disk). A stock cloud image is far bigger and
much slower to boot under TCG.

Why it is built this way:

* Standard library only, so it runs before Haven's virtualenv exists (setup, CI, demos).
* No loop devices, mounts or root-only kernel features: the FAT filesystem is written into a
  plain file (mkfs.fat), filled with mtools, made bootable by the mtools-based ``syslinux``
  installer, and the initramfs cpio is written by this script. That works in containers.
* The disk is a "superfloppy" (FAT from sector 0, no partition table): SeaBIOS boots its boot
  sector like an MBR. Haven boots Glance images as plain disks, with no -kernel/-initrd.
* Idempotent: ``tiny.json`` records a digest of every input (this script, which embeds the
  guest's /init; the kernel package and version; busybox; syslinux; the disk size). A rerun
  with the same inputs does nothing; a changed input rebuilds.

Host tools: apt-get/apt-cache/dpkg-deb (kernel download, no install into the host),
/bin/busybox (busybox-static), mkfs.fat (dosfstools), mcopy (mtools), syslinux (syslinux,
syslinux-common), qemu-img (qemu-utils).

Usage: ``python3 images/tiny/build.py --out DIR [--size-mib 32] [--kernel-package NAME]
[--force]``. Outputs in DIR: tiny.qcow2 (the bootable disk), tiny-vmlinuz and tiny-initrd.img
(the same kernel and initramfs, for direct-kernel boots), tiny.json (manifest).
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Bump when the output layout changes in a way the input digests would not notice.
FORMAT_VERSION = 2

IMAGE_NAME = "tiny.qcow2"
KERNEL_NAME = "tiny-vmlinuz"
INITRD_NAME = "tiny-initrd.img"
MANIFEST_NAME = "tiny.json"

MIB = 1024 * 1024
DEFAULT_SIZE_MIB = 32
# The token area: the last MiB of the disk, outside the FAT filesystem.
TOKEN_AREA_BYTES = MIB

BOOTED_MARKER = "HAVEN-TINY-BOOTED"
KERNEL_CMDLINE = "console=ttyS0,115200 quiet loglevel=3 panic=10"
KERNEL_FLAVOURS = ("cloud-amd64", "amd64")  # preferred first
# Also passed to apt-cache as a POSIX ERE, hence [0-9] rather than \d.
KERNEL_PACKAGE_RE = re.compile(r"^linux-image-6\.1\.0-([0-9]+)-(cloud-amd64|amd64)$")

# Load order matters: busybox insmod does not resolve dependencies. The virtio drivers are
# modules even in the -cloud flavour (checked: CONFIG_VIRTIO_BLK=m, CONFIG_VIRTIO_PCI=m).
# evdev + button give the ACPI power button an input device that busybox acpid can read.
MODULES = (
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci",
    "drivers/block/virtio_blk",
    "drivers/input/evdev",
    "drivers/acpi/button",
)

# Loaded by /etc/haven/cloud.sh after the boot marker, in this order, with these parameters:
# the NIC (virtio_net), and the IDE CD-ROM a config drive is on (Haven's and Nova's libvirt
# domains are machine "pc": PIIX IDE; the -cloud kernel has no AHCI) with its filesystem.
# scan=sync: the CD-ROM is registered before insmod returns, so cloud.sh need not poll for it.
CLOUD_MODULES = (
    ("net/core/failover", ""),
    ("drivers/net/net_failover", ""),
    ("drivers/net/virtio_net", ""),
    ("drivers/scsi/scsi_common", ""),
    ("drivers/scsi/scsi_mod", "scan=sync"),
    ("drivers/cdrom/cdrom", ""),
    ("drivers/scsi/sr_mod", ""),
    ("drivers/ata/libata", ""),
    ("drivers/ata/ata_piix", ""),
    ("fs/isofs/isofs", ""),
)

# The guest's cloud-init stand-in and its helpers, installed as /etc/haven/<name>.
GUEST_DIR = Path(__file__).resolve().parent / "guest"
GUEST_FILES = {"cloud.sh": 0o755, "udhcpc.script": 0o755, "json.awk": 0o644}

# The SSH server: Debian's dropbear-bin, copied in with the shared libraries it links.
DROPBEAR_BINARIES = (Path("/usr/sbin/dropbear"), Path("/usr/bin/dropbearkey"))

# root may log in with a key only: "*" is a password nothing matches (dropbear refuses an
# account whose password field is empty, even for keys).
ETC_FILES = {
    "etc/passwd": "root:*:0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\n",
    "etc/shells": "/bin/sh\n",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
    "etc/hostname": "tiny\n",
}

BUSYBOX = Path("/bin/busybox")
SYSLINUX = Path("/usr/bin/syslinux")

# PID 1 of the guest. Kept in this file so the script digest covers it.
INIT_SCRIPT = r"""#!/bin/sh
# Haven tiny guest, PID 1 (generated by images/tiny/build.py; see images/tiny/README.md).
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /sbin /usr/bin /usr/sbin /var/log /var/run
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root

for m in __MODULES__; do
    insmod "/lib/modules/$m.ko" || echo "HAVEN-WARN insmod $m failed"
done

# acpid opens the /dev/input/event* nodes that exist when it starts: wait (up to ~3 s) until
# devtmpfs has a node for every input device, so the power button is among them.
i=0
while [ $i -lt 30 ]; do
    missing=0
    for e in /sys/class/input/event*; do
        [ -e "$e" ] && [ ! -c "/dev/input/${e##*/}" ] && missing=1
    done
    [ $missing = 0 ] && break
    sleep 0.1; i=$((i + 1))
done
acpid -c /etc/acpi -l /var/log/acpid.log

# The newline ends whatever firmware/bootloader escape codes are on the console's current line,
# so the marker starts a line of its own.
echo
echo "__MARKER__"

# The token area is the last 1 MiB of the boot disk, outside any filesystem: a text line
# "HAVEN-TOKEN <32 hex>" at its start. It survives reboots iff the disk does.
token() {
    disk=vda
    i=0
    while [ ! -b /dev/$disk ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    if [ ! -b /dev/$disk ]; then echo "HAVEN-TOKEN-ERROR no /dev/$disk"; return; fi
    sectors=$(cat /sys/block/$disk/size)
    if [ "$sectors" -lt 4096 ]; then echo "HAVEN-TOKEN-ERROR /dev/$disk too small"; return; fi
    off=$((sectors - 2048))
    line=$(dd if=/dev/$disk bs=512 skip=$off count=1 2>/dev/null | tr -d '\000' | head -n 1)
    tok=${line#HAVEN-TOKEN }
    if [ "$tok" != "$line" ] && [ ${#tok} -eq 32 ] && [ -z "$(echo "$tok" | tr -d 0-9a-f)" ]
    then
        echo "HAVEN-TOKEN $tok from-disk"
        return
    fi
    # 16 bytes from /dev/urandom, hashed with the clock in case two TCG guests boot in lockstep
    # before the kernel's pool is well seeded.
    tok=$({ head -c 16 /dev/urandom; date +%s.%N; cat /proc/uptime /proc/interrupts; } \
        | sha256sum | cut -c 1-32)
    printf 'HAVEN-TOKEN %s\n' "$tok" \
        | dd of=/dev/$disk bs=512 seek=$off count=1 conv=sync,notrunc,fsync 2>/dev/null
    sync
    back=$(dd if=/dev/$disk bs=512 skip=$off count=1 2>/dev/null | tr -d '\000' | head -n 1)
    if [ "$back" = "HAVEN-TOKEN $tok" ]; then
        echo "HAVEN-TOKEN $tok new"
    else
        echo "HAVEN-TOKEN-ERROR write to /dev/$disk did not stick"
    fi
}
token

# DHCP, instance data, SSH, user data (images/tiny/guest/cloud.sh), alongside the console.
/etc/haven/cloud.sh &

(
    while :; do
        sleep 10
        # Leading newline: the console line may hold the shell's prompt.
        printf '\nHAVEN-HEARTBEAT uptime=%s\n' "$(cut -d ' ' -f 1 /proc/uptime)"
    done
) &

# A shell on the console for `virsh console`; PID 1 must never exit.
while :; do
    setsid cttyhack sh
    sleep 5
done
"""

# busybox acpid maps the power button (KEY_POWER) to the action "PWRF/00000080" and executes
# that path relative to its config directory.
ACPI_POWER_SCRIPT = """#!/bin/sh
printf '\\nHAVEN-POWEROFF acpi\\n' > /dev/console
sync
poweroff -f
"""

SYSLINUX_CFG = f"""SERIAL 0 115200
DEFAULT haven
PROMPT 0
TIMEOUT 0
LABEL haven
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND {KERNEL_CMDLINE}
"""


class BuildError(RuntimeError):
    """A build step failed; the message says what to do."""


def log(message: str) -> None:
    """Progress goes to stderr so stdout stays clean for callers that parse it."""
    print(f"[tiny] {message}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a host tool; fail with its output, since tool errors are the usual build failure."""
    try:
        proc = subprocess.run(
            list(cmd), cwd=cwd, env=env, capture_output=True, text=True, check=False
        )
    except FileNotFoundError as exc:
        raise BuildError(f"{cmd[0]} is not installed (see images/tiny/README.md)") from exc
    if proc.returncode != 0:
        raise BuildError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}".rstrip()
        )
    return proc.stdout


def sha256_file(path: Path) -> str:
    """Digest a file in chunks (busybox, syslinux) for the input fingerprint."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class KernelPackage:
    """A Debian kernel image package as apt knows it."""

    name: str
    version: str


def candidates(pattern: str) -> dict[str, str]:
    """Installable package versions apt knows for a name or regex: {package: version}.

    One ``apt-cache policy`` call (~0.8 s here: the container keeps no apt binary cache), so
    an up-to-date check stays under a second.
    """
    out = run(["apt-cache", "policy", pattern])
    found: dict[str, str] = {}
    package = ""
    for line in out.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            package = line[:-1]
        elif line.strip().startswith("Candidate:") and package:
            version = line.split(":", 1)[1].strip()
            if version != "(none)":
                found[package] = version
    return found


def resolve_kernel(explicit: str | None) -> KernelPackage:
    """Pick the newest 6.1 kernel image, preferring the small -cloud-amd64 flavour.

    Cloud and regular flavours both build virtio as modules, so the smaller download wins.
    """
    if explicit:
        version = candidates(explicit).get(explicit)
        if version is None:
            raise BuildError(f"apt has no candidate for {explicit} (try: apt-get update)")
        return KernelPackage(explicit, version)
    available = candidates(KERNEL_PACKAGE_RE.pattern)
    for flavour in KERNEL_FLAVOURS:
        newest: tuple[int, str] | None = None
        for name in available:
            match = KERNEL_PACKAGE_RE.match(name)
            if match and match.group(2) == flavour:
                newest = max(newest or (-1, ""), (int(match.group(1)), name))
        if newest is not None:
            return KernelPackage(newest[1], available[newest[1]])
    raise BuildError("apt knows no linux-image-6.1.0-*-amd64 package (try: apt-get update)")


def deb_version(deb: Path) -> str:
    """The Version field of a .deb, to check a cached download is the one apt wants."""
    return run(["dpkg-deb", "-f", str(deb), "Version"]).strip()


def download_deb(kernel: KernelPackage, cache: Path) -> Path:
    """``apt-get download`` one exact version into the cache, unless it is there already.

    Only that one .deb is kept (~27 MB each): superseded kernels are dropped.
    """
    target = next(
        (deb for deb in cache.glob(f"{kernel.name}_*.deb") if deb_version(deb) == kernel.version),
        None,
    )
    if target is None:
        staging = cache / f".download-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            log(f"downloading {kernel.name} {kernel.version}")
            # Sandbox user root: the _apt user may not be able to write into any --out.
            spec = f"{kernel.name}={kernel.version}"
            run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", spec], cwd=staging)
            debs = list(staging.glob("*.deb"))
            if len(debs) != 1:
                raise BuildError(f"apt-get download {spec} left {len(debs)} .deb files")
            target = cache / debs[0].name
            os.replace(debs[0], target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    for old in cache.glob("*.deb"):
        if old != target:
            old.unlink()
    return target


def fetch_kernel(kernel: KernelPackage, cache: Path, explicit: bool) -> tuple[KernelPackage, Path]:
    """Get the kernel .deb (cached across builds), never installing it into the host.

    A stale apt index can name a version the mirror no longer has: then run ``apt-get update``
    once, resolve again and retry.
    """
    cache.mkdir(parents=True, exist_ok=True)
    try:
        return kernel, download_deb(kernel, cache)
    except BuildError as exc:
        log(f"{exc}\n[tiny] running apt-get update once and retrying")
    run(["apt-get", "update", "-q"])
    kernel = resolve_kernel(kernel.name if explicit else None)
    return kernel, download_deb(kernel, cache)


def extract_kernel(deb: Path, dest: Path) -> tuple[Path, dict[str, Path], str]:
    """Stream the .deb's data and keep only vmlinuz and the few modules the guest loads.

    Streaming (instead of ``dpkg -x`` of ~100 MB) keeps the build light on a shared disk.
    """
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {
        f"/kernel/{module}.ko": module.rsplit("/", 1)[1]
        for module in (*MODULES, *(name for name, _ in CLOUD_MODULES))
    }
    modules: dict[str, Path] = {}
    vmlinuz: Path | None = None
    release = ""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name.lstrip(".")
                target: Path | None = None
                boot = re.fullmatch(r"/boot/vmlinuz-(.+)", name)
                if boot:
                    release = boot.group(1)
                    target = vmlinuz = dest / "vmlinuz"
                else:
                    for suffix, module in wanted.items():
                        if name.startswith("/lib/modules/") and name.endswith(suffix):
                            target = modules[module] = dest / f"{module}.ko"
                if target is not None:
                    src = tar.extractfile(member)
                    assert src is not None
                    with target.open("wb") as out:
                        shutil.copyfileobj(src, out)
    finally:
        proc.stdout.close()
        if proc.wait() != 0:
            raise BuildError(f"dpkg-deb --fsys-tarfile {deb} failed")
    missing = sorted(set(wanted.values()) - set(modules))
    if vmlinuz is None or missing:
        raise BuildError(f"{deb.name} lacks vmlinuz or modules: {missing}")
    return vmlinuz, modules, release


class Cpio:
    """A minimal cpio "newc" writer: the initramfs needs a /dev/console node, which would
    otherwise take root and mknod; writing the archive directly needs neither."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 0

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        self._ino += 1
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = b"070701" + b"".join(b"%08x" % value for value in fields)
        self._buf.write(header + encoded)
        self._pad()
        self._buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self._buf.write(b"\0" * (-self._buf.tell() % 4))

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self._buf.getvalue()


def shared_libraries(binaries: Sequence[Path]) -> list[Path]:
    """The shared libraries (and the dynamic loader) the binaries link, as ``ldd`` resolves
    them on this host: the guest gets the very files Debian installed here."""
    libraries: set[Path] = set()
    for binary in binaries:
        for line in run(["ldd", str(binary)]).splitlines():
            # "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or "/lib64/ld-... (0x...)"
            match = re.search(r"(/\S+) \(0x[0-9a-f]+\)$", line.strip())
            if match:
                libraries.add(Path(match.group(1)))
    return sorted(libraries)


def guest_files() -> dict[str, bytes]:
    """Everything besides the kernel modules that the guest's userland is made of, by its
    path in the initramfs: the cloud-init stand-in and the SSH server with its libraries."""
    files = {f"etc/haven/{name}": (GUEST_DIR / name).read_bytes() for name in GUEST_FILES}
    for binary in DROPBEAR_BINARIES:
        if not binary.exists():
            raise BuildError(f"{binary} is missing (apt-get install dropbear-bin)")
        files[str(binary).lstrip("/")] = binary.read_bytes()
    for library in shared_libraries(DROPBEAR_BINARIES):
        files[str(library).lstrip("/")] = library.read_bytes()  # symlinks: their target's bytes
    return files


def parents(paths: Sequence[str]) -> list[str]:
    """Every directory above the given paths, shortest first, so a cpio creates them in order."""
    found = {str(parent) for path in paths for parent in Path(path).parents if str(parent) != "."}
    return sorted(found, key=lambda name: (name.count("/"), name))


def build_initramfs(modules: dict[str, Path]) -> bytes:
    """The guest's whole userland: busybox, /init, the modules, the ACPI power handler, the
    cloud-init stand-in (/etc/haven) and dropbear.

    Deterministic (fixed mtimes, gzip mtime 0) so identical inputs give identical bytes.
    """
    order = [module.rsplit("/", 1)[1] for module in MODULES]
    init = INIT_SCRIPT.replace("__MODULES__", " ".join(order)).replace("__MARKER__", BOOTED_MARKER)
    cpio = Cpio()
    for directory in (
        "bin",
        "dev",
        "etc",
        "etc/acpi",
        "etc/acpi/PWRF",
        "etc/haven",
        "lib",
        "lib/modules",
        "mnt",
        "proc",
        "run",
        "sbin",
        "sys",
        "tmp",
        "usr",
        "usr/bin",
        "usr/sbin",
        "var",
        "var/log",
        "var/run",
    ):
        cpio.directory(directory)
    cpio.directory("root", 0o700)  # dropbear refuses keys under a home others may write
    cpio.char_device("dev/console", 5, 1)
    cpio.char_device("dev/null", 1, 3, 0o666)
    cpio.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.file("init", init.encode(), 0o755)
    cpio.file("etc/acpi/PWRF/00000080", ACPI_POWER_SCRIPT.encode(), 0o755)
    for name in order:
        cpio.file(f"lib/modules/{name}.ko", modules[name].read_bytes())
    cloud_modules = "".join(
        f"{path.rsplit('/', 1)[1]} {params}".rstrip() + "\n" for path, params in CLOUD_MODULES
    )
    for path, _ in CLOUD_MODULES:
        name = path.rsplit("/", 1)[1]
        cpio.file(f"lib/modules/{name}.ko", modules[name].read_bytes())
    cpio.file("etc/haven/cloud-modules", cloud_modules.encode())
    for name, text in ETC_FILES.items():
        cpio.file(name, text.encode())
    extra = guest_files()
    created = {"etc", "etc/haven", "lib", "usr", "usr/bin", "usr/sbin"}
    for directory in parents(sorted(extra)):
        if directory not in created:
            cpio.directory(directory)
    for name, data in sorted(extra.items()):
        mode = GUEST_FILES.get(name.rsplit("/", 1)[1], 0o644) if name.startswith("etc/") else 0o755
        cpio.file(name, data, mode)
    return gzip.compress(cpio.finish(), compresslevel=9, mtime=0)


def build_disk(vmlinuz: Path, initrd: Path, size_mib: int, work: Path) -> Path:
    """A raw superfloppy: FAT over all but the last MiB, syslinux in its boot sector."""
    mtools_env = dict(os.environ, MTOOLS_SKIP_CHECK="1", MTOOLSRC="/dev/null")
    raw = work / "disk.raw"
    fat_bytes = size_mib * MIB - TOKEN_AREA_BYTES
    with raw.open("wb") as fh:
        fh.truncate(fat_bytes)
    # Fixed volume id and label: the only variable bytes left are mtools timestamps.
    run(["mkfs.fat", "-n", "HAVENTINY", "-i", "4856544e", str(raw)])  # FAT12/16/32 by size
    cfg = work / "syslinux.cfg"
    cfg.write_text(SYSLINUX_CFG)
    for src, dst in ((vmlinuz, "vmlinuz"), (initrd, "initrd.img"), (cfg, "syslinux.cfg")):
        run(["mcopy", "-o", "-i", str(raw), str(src), f"::/{dst}"], env=mtools_env)
    run([str(SYSLINUX), "--install", str(raw)], env=mtools_env)
    with raw.open("r+b") as fh:
        fh.truncate(size_mib * MIB)  # the token area: zeros, outside the filesystem
    return raw


def collect_inputs(kernel: KernelPackage, size_mib: int) -> dict[str, object]:
    """Everything the output depends on; equal inputs mean the existing build is current."""
    for tool in (BUSYBOX, SYSLINUX):
        if not tool.exists():
            raise BuildError(f"{tool} is missing (apt-get install busybox-static syslinux)")
    guest = hashlib.sha256()
    for name, data in sorted(guest_files().items()):
        guest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return {
        "format": FORMAT_VERSION,
        "script_sha256": sha256_file(Path(__file__).resolve()),
        "kernel_package": kernel.name,
        "kernel_version": kernel.version,
        "busybox_sha256": sha256_file(BUSYBOX),
        "syslinux_sha256": sha256_file(SYSLINUX),
        "guest_sha256": guest.hexdigest(),
        "size_mib": size_mib,
    }


def is_current(out: Path, inputs: dict[str, object]) -> bool:
    """True if the manifest records these inputs and every output it names still exists."""
    try:
        manifest = json.loads((out / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    outputs = (IMAGE_NAME, KERNEL_NAME, INITRD_NAME)
    return manifest.get("inputs") == inputs and all((out / name).is_file() for name in outputs)


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Serialise concurrent builds into one directory (parallel test sessions share a cache)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build(out: Path, size_mib: int, kernel_package: str | None, force: bool) -> dict[str, object]:
    """Build (or confirm up to date) the tiny image in ``out``; returns the manifest."""
    started = time.monotonic()
    with locked(out):
        kernel = resolve_kernel(kernel_package)
        inputs = collect_inputs(kernel, size_mib)
        if not force and is_current(out, inputs):
            log(f"{out / IMAGE_NAME} is up to date")
            return dict(json.loads((out / MANIFEST_NAME).read_text()))
        kernel, deb = fetch_kernel(kernel, out / ".cache", explicit=bool(kernel_package))
        inputs = collect_inputs(kernel, size_mib)
        (out / MANIFEST_NAME).unlink(missing_ok=True)  # outputs are about to change
        work = out / f".work-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            log(f"extracting {deb.name}")
            vmlinuz, modules, release = extract_kernel(deb, work / "kernel")
            initrd = work / "initrd.img"
            initrd.write_bytes(build_initramfs(modules))
            log("writing FAT filesystem, syslinux and qcow2")
            raw = build_disk(vmlinuz, initrd, size_mib, work)
            qcow2 = work / IMAGE_NAME
            run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)])
            os.replace(vmlinuz, out / KERNEL_NAME)
            os.replace(initrd, out / INITRD_NAME)
            os.replace(qcow2, out / IMAGE_NAME)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        manifest: dict[str, object] = {
            "inputs": inputs,
            "image": IMAGE_NAME,
            "kernel": KERNEL_NAME,
            "initrd": INITRD_NAME,
            "kernel_release": release,
            "kernel_cmdline": KERNEL_CMDLINE,
            "virtual_size_bytes": size_mib * MIB,
            "token_offset_bytes": size_mib * MIB - TOKEN_AREA_BYTES,
            "console": {
                "booted": BOOTED_MARKER,
                "token": "HAVEN-TOKEN <32 hex> new|from-disk",
                "heartbeat": "HAVEN-HEARTBEAT uptime=<seconds>",
                "poweroff": "HAVEN-POWEROFF acpi",
                "net": "HAVEN-TINY-NET <nic> <ip>/<prefix>|none (or HAVEN-TINY-NET none)",
                "metadata": "HAVEN-TINY-METADATA configdrive <dev>|metadata-service <url>|none",
                "hostname": "HAVEN-TINY-HOSTNAME <name>",
                "keys": "HAVEN-TINY-KEYS <count>",
                "hostkey": "HAVEN-TINY-HOSTKEY <type> <base64>",
                "ssh": "HAVEN-TINY-SSH 22",
                "user_data": "HAVEN-TINY-USERDATA none|not-a-script|start|exit=<status>",
                "ready": "HAVEN-TINY-READY",
            },
        }
        tmp = out / f".{MANIFEST_NAME}.tmp"
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, out / MANIFEST_NAME)  # the commit point of a build
        log(f"built {out / IMAGE_NAME} in {time.monotonic() - started:.1f} s")
        return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; exit status 1 with a readable message on a failed step."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--size-mib",
        type=int,
        default=DEFAULT_SIZE_MIB,
        help=f"virtual disk size in MiB, the last MiB is the token area "
        f"(default {DEFAULT_SIZE_MIB})",
    )
    parser.add_argument(
        "--kernel-package", help="pin the kernel package (default: newest 6.1 cloud-amd64)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    if args.size_mib < 24:
        parser.error("--size-mib must be at least 24 (kernel + initramfs + token area)")
    try:
        build(args.out.resolve(), args.size_mib, args.kernel_package, args.force)
    except BuildError as exc:
        log(f"error: {exc}")
        return 1
    print(args.out.resolve() / IMAGE_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
