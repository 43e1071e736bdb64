"""The tiny guest does what a cloud image does: DHCP, instance data, SSH key, user data.

Each test boots images/tiny once in plain QEMU (TCG) on QEMU's user-mode network restricted to
the guest (``restrict=on``: the guest reaches nothing but what the test forwards, nothing
leaves the machine), gets its address from QEMU's DHCP server and reads its instance data:

* from a ``config-2`` ISO the test makes with xorriso (openstack/latest/meta_data.json and
  user_data, laid out as Nova and Haven's config drive do);
* without a config drive, from the metadata service at 169.254.169.254, which QEMU forwards
  (``guestfwd``) to an HTTP server the test runs on loopback. QEMU only forwards addresses
  inside the guest's own network, so that boot's network is 169.254.169.0/24.

Then the test logs in with ``ssh -i`` (OpenSSH, a key made by the test), checking the host key
the guest printed on its console, and finds the user data's effects; a key the metadata does
not list is refused.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.integration.tinyvm import CACHE_DIR, Guest, build, overlay

REQUIRED_TOOLS = (
    "qemu-system-x86_64", "qemu-img", "apt-get", "mkfs.fat", "mcopy", "syslinux",
    "xorriso", "ssh", "ssh-keygen", "busybox", "dropbear",
)  # fmt: skip
pytestmark = pytest.mark.skipif(
    any(
        shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None for tool in REQUIRED_TOOLS
    ),
    reason=f"needs {', '.join(REQUIRED_TOOLS)}",
)

# The guest's whole boot, metadata retries included, on a loaded shared machine.
READY_TIMEOUT = 240.0
INSTANCE_UUID = "3f1c6a2e-9b7d-4c1e-8f55-0a6b2d4e7c91"


def line(text: str) -> re.Pattern[str]:
    """A console line exactly (the serial console ends lines with \\r\\n)."""
    return re.compile(rf"^{re.escape(text)}\r?$", re.MULTILINE)


READY = line("HAVEN-TINY-READY")


@pytest.fixture(scope="module")
def tiny_image() -> Path:
    build(CACHE_DIR)
    return CACHE_DIR / "tiny.qcow2"


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, str]:
    """An ed25519 key made for this test: (private key file, public key line)."""
    key = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tester@haven", "-f", str(key)],
        check=True,
    )
    return key, key.with_suffix(".pub").read_text().strip()


def meta_data(public_key: str) -> dict[str, object]:
    """An OpenStack meta_data.json as Nova writes it (the fields cloud-init reads, and more)."""
    return {
        "uuid": INSTANCE_UUID,
        "name": "Web Server 1",
        "hostname": "web-1.novalocal",
        "launch_index": 0,
        "availability_zone": "nova",
        "project_id": "6f2d0d4b8a1e4b0c9d3e2f1a0b9c8d7e",
        "public_keys": {"tester": public_key},
        "keys": [{"name": "tester", "type": "ssh", "data": public_key}],
        "meta": {"note": 'caf\u00e9 \u2713 "quoted" \\ back/slash'},
        "devices": [],
        "random_seed": "c2VlZA==",
    }


def user_data(token: str) -> bytes:
    """A user data script leaving proof on the console and on the guest's disk-less root."""
    return (
        "#!/bin/sh\n"
        f'echo "user-data-ran {token} as $(id -u) on $(hostname)"\n'
        f"echo {token} > /root/user-data-proof\n"
        "echo to-stderr >&2\n"
    ).encode()


def free_port() -> int:
    """A loopback TCP port free right now (QEMU binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nic(*options: str, name: str = "n0") -> list[str]:
    """A virtio NIC on QEMU's user-mode network, restricted to the guest and the forwards."""
    return [
        "-netdev", ",".join(["user", f"id={name}", "restrict=on", *options]),
        "-device", f"virtio-net-pci,netdev={name}",
    ]  # fmt: skip


def ssh(key: Path, port: int, known_hosts: Path, command: str) -> subprocess.CompletedProcess[str]:
    """OpenSSH to the guest through QEMU's host forward, trusting only the console's host key."""
    return subprocess.run(
        [
            "ssh", "-i", str(key), "-p", str(port),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=60", "-o", "LogLevel=ERROR",
            "root@127.0.0.1", command,
        ],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


def trust_console_host_key(guest: Guest, port: int, path: Path) -> Path:
    """known_hosts from the HAVEN-TINY-HOSTKEY console line, as a client of a cloud VM does."""
    match = guest.wait_for(re.compile(r"^HAVEN-TINY-HOSTKEY (ssh-ed25519 \S+)\r?$", re.MULTILINE))
    path.write_text(f"[127.0.0.1]:{port} {match.group(1)}\n")
    return path


def check_logged_in_guest(key: Path, port: int, known_hosts: Path, token: str) -> str:
    """The injected key logs in and sees what the metadata and the user data set up."""
    result = ssh(key, port, known_hosts, "hostname; cat /root/user-data-proof; id -u")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["web-1", token, "0"]
    return result.stdout


def check_other_key_refused(tmp_path: Path, port: int, known_hosts: Path) -> None:
    """A key the metadata does not list gets nowhere (only public_keys are authorized)."""
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    result = ssh(stranger, port, known_hosts, "true")
    assert result.returncode == 255
    assert "Permission denied" in result.stderr


def check_console(guest: Guest, source: str, address: str, token: str) -> None:
    console = guest.console()
    for expected in (
        "HAVEN-TINY-BOOTED",
        f"HAVEN-TINY-NET eth0 {address}",
        f"HAVEN-TINY-METADATA {source}",
        "HAVEN-TINY-HOSTNAME web-1",
        "HAVEN-TINY-KEYS 1",
        "HAVEN-TINY-SSH 22",
        "HAVEN-TINY-USERDATA start",
        f"user-data-ran {token} as 0 on web-1",
        "to-stderr",
        "HAVEN-TINY-USERDATA exit=0",
    ):
        assert line(expected).search(console), f"no console line {expected!r}:\n{console}"


def make_config_drive(tmp_path: Path, meta: dict[str, object], script: bytes) -> Path:
    """A config-2 ISO9660 image like Nova's (Rock Ridge and Joliet), made with xorriso."""
    tree = tmp_path / "config-drive"
    latest = tree / "openstack" / "latest"
    latest.mkdir(parents=True)
    (latest / "meta_data.json").write_text(json.dumps(meta))
    (latest / "user_data").write_bytes(script)
    iso = tmp_path / "config-drive.iso"
    subprocess.run(
        ["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), "-V", "config-2", "-J", "-R",
         str(tree)],
        check=True, capture_output=True,
    )  # fmt: skip
    return iso


def test_config_drive_gives_address_key_hostname_and_runs_user_data(
    tiny_image: Path, tmp_path: Path, keypair: tuple[Path, str]
) -> None:
    key, public_key = keypair
    token = secrets.token_hex(8)
    iso = make_config_drive(tmp_path, meta_data(public_key), user_data(token))
    port = free_port()
    devices = [
        "-drive", f"file={iso},media=cdrom,readonly=on",   # IDE, as libvirt's "pc" machine has it
        *nic(f"hostfwd=tcp:127.0.0.1:{port}-:22"),
        *nic("net=10.0.3.0/24", name="n1"),  # a second NIC, on a network of its own
    ]  # fmt: skip
    disk = overlay(tiny_image, tmp_path / "disk.qcow2")
    with Guest(disk, tmp_path, "configdrive", devices) as guest:
        guest.wait_for(READY, READY_TIMEOUT)
        # QEMU's DHCP server hands out 10.0.2.15 first (its network is 10.0.2.0/24).
        check_console(guest, "configdrive /dev/sr0", "10.0.2.15/24", token)
        assert line("HAVEN-TINY-NET eth1 10.0.3.15/24").search(guest.console())
        known_hosts = trust_console_host_key(guest, port, tmp_path / "known_hosts")
        check_logged_in_guest(key, port, known_hosts, token)
        check_other_key_refused(tmp_path, port, known_hosts)


class MetadataService:
    """OpenStack's metadata paths on a loopback HTTP server, answering 503 to the first
    meta_data.json request (a service still starting) so the guest must retry."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[tuple[str, int]] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                first_try = not any(path == self.path for path, _ in service.requests)
                body = service.files.get(self.path)
                if body is None:
                    status, body = 404, b"Not Found"
                elif self.path.endswith("/meta_data.json") and first_try:
                    status, body = 503, b"Service Unavailable"
                else:
                    status = 200
                service.requests.append((self.path, status))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> MetadataService:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def metadata_service(keypair: tuple[Path, str]) -> Iterator[tuple[MetadataService, str]]:
    token = secrets.token_hex(8)
    base = "/openstack/latest"
    files = {
        f"{base}/meta_data.json": json.dumps(meta_data(keypair[1])).encode(),
        f"{base}/user_data": user_data(token),
    }
    with MetadataService(files) as service:
        yield service, token


def test_without_config_drive_the_metadata_service_is_read_over_http(
    tiny_image: Path,
    tmp_path: Path,
    keypair: tuple[Path, str],
    metadata_service: tuple[MetadataService, str],
) -> None:
    key, _ = keypair
    service, token = metadata_service
    port = free_port()
    devices = nic(
        "net=169.254.169.0/24",
        # One `busybox nc` per guest connection, bridging it to the loopback server.
        f"guestfwd=tcp:169.254.169.254:80-cmd:busybox nc 127.0.0.1 {service.port}",
        f"hostfwd=tcp:127.0.0.1:{port}-:22",
    )
    disk = overlay(tiny_image, tmp_path / "disk.qcow2")
    with Guest(disk, tmp_path, "metadata", devices) as guest:
        guest.wait_for(READY, READY_TIMEOUT)
        check_console(
            guest, "metadata-service http://169.254.169.254/openstack/latest",
            "169.254.169.15/24", token,
        )  # fmt: skip
        meta, user = "/openstack/latest/meta_data.json", "/openstack/latest/user_data"
        # The 503 was retried until meta_data.json came, then user_data was read; the guest
        # asked for nothing else.
        assert service.requests[0] == (meta, 503)
        assert (meta, 200) in service.requests
        assert service.requests[-1] == (user, 200)
        assert {path for path, _ in service.requests} == {meta, user}
        known_hosts = trust_console_host_key(guest, port, tmp_path / "known_hosts")
        check_logged_in_guest(key, port, known_hosts, token)
        check_other_key_refused(tmp_path, port, known_hosts)
