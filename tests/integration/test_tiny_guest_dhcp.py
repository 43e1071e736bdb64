"""The tiny guest's DHCP client script applies what a Neutron-style DHCP server sends.

QEMU's own DHCP server sends no MTU, no classless static routes and (restricted) no router,
so the guest's boots cannot show those. Here the very script the guest runs
(images/tiny/guest/udhcpc.script, with busybox's sh, ip and udhcpc, as in the guest) gets a
lease from busybox udhcpd across a veth pair between two network namespaces the test makes,
on TEST-NET addresses that exist only there, and the client namespace's routes, MTU and
resolv.conf are checked. Nothing is configured in the host's own namespace.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "images" / "tiny" / "guest" / "udhcpc.script"
BUSYBOX = Path("/bin/busybox")
APPLETS = ("ip", "cat", "mkdir", "mv", "rm", "head", "sh")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not BUSYBOX.exists() or shutil.which("ip") is None,
    reason="needs root (network namespaces), busybox and iproute2",
)

SERVER_IP = "192.0.2.1"
ROUTER = "192.0.2.2"


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@dataclass
class Link:
    """A DHCP server namespace and a client namespace joined by a veth pair."""

    server: str
    client: str
    tmp: Path

    def client_ip(self, *args: str) -> str:
        return ip("-n", self.client, *args)


@pytest.fixture
def link(tmp_path: Path) -> Iterator[Link]:
    tag = secrets.token_hex(3)
    server, client = f"haven-t-dhs{tag}", f"haven-t-dhc{tag}"
    ip("netns", "add", server)
    try:
        ip("netns", "add", client)
        try:
            ip("link", "add", "dhs0", "netns", server, "type", "veth",
               "peer", "name", "dhc0", "netns", client)  # fmt: skip
            ip("-n", server, "addr", "add", f"{SERVER_IP}/24", "dev", "dhs0")
            ip("-n", server, "link", "set", "dhs0", "up")
            yield Link(server, client, tmp_path)
        finally:
            ip("netns", "del", client)
    finally:
        ip("netns", "del", server)


def guest_tools(tmp: Path) -> Path:
    """A PATH of busybox applets (the guest's tools) and a wrapper running the script with
    busybox's sh, as the guest does (the host's /bin/sh is dash)."""
    bindir = tmp / "bin"
    bindir.mkdir()
    for applet in APPLETS:
        (bindir / applet).symlink_to(BUSYBOX)
    wrapper = tmp / "udhcpc-event"
    wrapper.write_text(f'#!{BUSYBOX} sh\nexec {BUSYBOX} sh {SCRIPT} "$@"\n')
    wrapper.chmod(0o755)
    return bindir


def serve_and_lease(link: Link, options: list[str]) -> dict[str, str]:
    """Run udhcpd with these options and one udhcpc round in the client namespace; returns
    the environment the script needs for later events."""
    conf = link.tmp / "udhcpd.conf"
    conf.write_text("\n".join([
        "start 192.0.2.100", "end 192.0.2.110", "interface dhs0",
        f"lease_file {link.tmp / 'leases'}", f"pidfile {link.tmp / 'udhcpd.pid'}",
        "option subnet 255.255.255.0", *options, "",
    ]))  # fmt: skip
    (link.tmp / "leases").touch()
    env = {
        "PATH": str(guest_tools(link.tmp)),
        "HAVEN_STATE": str(link.tmp / "state"),
        "HAVEN_RESOLV_CONF": str(link.tmp / "resolv.conf"),
    }
    with (link.tmp / "udhcpd.log").open("wb") as log:
        server = subprocess.Popen(
            ["ip", "netns", "exec", link.server, str(BUSYBOX), "udhcpd", "-f", str(conf)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        # Foreground (-f), quit once bound (-q), give up after its retries (-n): no daemon.
        client = subprocess.run(
            ["ip", "netns", "exec", link.client, "env", "-i", *(f"{k}={v}" for k, v in env.items()),
             str(BUSYBOX), "udhcpc", "-i", "dhc0", "-s", str(link.tmp / "udhcpc-event"),
             "-O", "staticroutes", "-O", "mtu", "-O", "search", "-f", "-q", "-n",
             "-t", "10", "-T", "1"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert client.returncode == 0, client.stdout + client.stderr
    return env


def lease_address(link: Link) -> str:
    return (link.tmp / "state" / "net" / "dhc0").read_text().splitlines()[0]


def test_classless_static_routes_replace_the_router_and_mtu_and_dns_are_applied(
    link: Link,
) -> None:
    serve_and_lease(link, [
        f"option router {ROUTER}",
        "option dns 192.0.2.53 192.0.2.54",
        "option domain example.test",
        "option mtu 1400",
        # On-link metadata route (gateway 0.0.0.0), a routed prefix, and the default route.
        f"option staticroutes 169.254.169.254/32 0.0.0.0, 198.51.100.0/24 192.0.2.254, "
        f"0.0.0.0/0 {SERVER_IP}",
    ])  # fmt: skip
    address = lease_address(link)
    assert address.startswith("192.0.2.1") and address.endswith("/24")
    assert f"inet {address} " in link.client_ip("-4", "addr", "show", "dhc0")
    assert "mtu 1400 " in link.client_ip("link", "show", "dhc0")
    routes = [" ".join(route.split()) for route in link.client_ip("-4", "route").splitlines()]
    assert any(
        route.startswith("169.254.169.254 dev dhc0 ") and "scope link" in route for route in routes
    ), routes
    assert any(route.startswith("198.51.100.0/24 via 192.0.2.254 dev dhc0") for route in routes)
    defaults = [route for route in routes if route.startswith("default")]
    # RFC 3442: with option 121 present, option 3 (the router) is ignored.
    assert len(defaults) == 1 and defaults[0].startswith(f"default via {SERVER_IP} dev dhc0")
    resolv = (link.tmp / "resolv.conf").read_text().splitlines()
    assert resolv == ["nameserver 192.0.2.53", "nameserver 192.0.2.54", "search example.test"]


def test_without_static_routes_the_router_is_the_default_and_deconfig_undoes_it(
    link: Link,
) -> None:
    env = serve_and_lease(link, [f"option router {ROUTER}", "option dns 192.0.2.53"])
    routes = link.client_ip("-4", "route", "show")
    assert f"default via {ROUTER} dev dhc0" in routes
    assert (link.tmp / "resolv.conf").read_text() == "nameserver 192.0.2.53\n"

    # udhcpc's "deconfig" (lease lost): no address, no route, no DNS server left behind.
    subprocess.run(
        ["ip", "netns", "exec", link.client, "env", "-i", *(f"{k}={v}" for k, v in env.items()),
         "interface=dhc0", str(link.tmp / "udhcpc-event"), "deconfig"],
        check=True, capture_output=True,
    )  # fmt: skip
    assert "inet " not in link.client_ip("-4", "addr", "show", "dhc0")
    assert link.client_ip("-4", "route", "show").strip() == ""
    assert (link.tmp / "resolv.conf").read_text() == ""
    assert not (link.tmp / "state" / "net" / "dhc0").exists()
