"""Request bodies are bounded before they are read, in both servers Haven runs under.

Regression (issue 9, "Request handling"): the 1 MiB limit checked only
``Content-Length``. A chunked body has none, and bottle then decoded the
(already decoded) body a second time and spooled whatever came out to a
temporary file, at any size and before the caller was authenticated. Stock
cheroot also read the whole declared length of a body an app had refused
(an unauthenticated image upload) before it sent the answer.

The clients here are raw sockets: a stock client would finish sending its body
before reading the answer, and the point is that the server answers (413, or
401) while the client is still sending, and does not wait for the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import ADMIN_PASSWORD, Services, free_port

HAVEN = str(Path(sys.executable).parent / "haven")
WATCHDOG = 60.0  # seconds a server may take to answer before the test calls it hung
MiB = 1 << 20


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server ended the connection after answering (rather than read on)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def endless_chunked_body(piece: int = 64 * 1024) -> Iterator[bytes]:
    """Chunks whose decoded content is itself chunk-framed (what bottle decoded a second
    time), never ending: a server that waits for the end never answers."""
    inner = _chunk(b"A" * (piece - 16))
    while True:
        yield _chunk(inner)


def _read_answer(sock: socket.socket) -> Answer:
    sock.settimeout(WATCHDOG)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            got = sock.recv(65536)
            if not got:
                break
            data += got
    except TimeoutError:
        pytest.fail(f"no answer within {WATCHDOG}s: the server is reading the whole body")
    head, _, rest = data.partition(b"\r\n\r\n")
    if not head:
        pytest.fail("the server closed the connection without an answer")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    with contextlib.suppress(OSError):
        while len(rest) < length:
            got = sock.recv(65536)
            if not got:
                break
            rest += got
    return Answer(int(lines[0].split()[1]), headers, rest[:length], _ends(sock))


def _ends(sock: socket.socket) -> bool:
    """Whether the server closes the connection (within the watchdog) instead of
    going on reading the body the client still sends."""
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass  # reset: closed with our bytes unread, as it should
    return True


def send_while_reading(address: str, head: str, body: Iterator[bytes],
                       cap: int = 16 * MiB) -> Answer:
    """Send ``head`` then ``body`` from a thread (stopping at ``cap`` bytes or when the
    server closes), and read the answer meanwhile."""
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=WATCHDOG)
    stop = threading.Event()

    def sender() -> None:
        sent = 0
        with contextlib.suppress(OSError):
            sock.sendall(head.encode("latin-1"))
            for piece in body:
                if stop.is_set() or sent > cap:
                    return
                sock.sendall(piece)
                sent += len(piece)

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    try:
        return _read_answer(sock)
    finally:
        stop.set()
        sock.close()
        thread.join(timeout=WATCHDOG)


def chunked_head(method: str, path: str, token: str | None = None,
                 last: bool = False) -> str:
    """A chunked request's head; ``last``: the client closes after it (no keep-alive)."""
    extra = f"X-Auth-Token: {token}\r\n" if token else ""
    extra += "Connection: close\r\n" if last else ""
    return (f"{method} {path} HTTP/1.1\r\nHost: haven\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\n{extra}\r\n")


def small_chunked(address: str, method: str, path: str, payload: bytes,
                  token: str | None = None) -> Answer:
    body = iter([_chunk(payload[:7]), _chunk(payload[7:]), b"0\r\n\r\n"])
    return send_while_reading(address, chunked_head(method, path, token, last=True), body)


def token_request() -> bytes:
    return json.dumps({"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"id": "default"}, "password": ADMIN_PASSWORD}}},
        "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}).encode()


def assert_refused_over_limit(answer: Answer) -> None:
    assert answer.status == 413, answer
    assert b"larger than the limit of 1 MiB" in answer.body, answer.body
    assert answer.closed


def check_bodies_are_bounded(identity: str, image: str, network: str, token: str) -> None:
    """The same checks against whichever server runs these addresses."""
    # unauthenticated, on a route that takes a body before authenticating anyone
    assert_refused_over_limit(send_while_reading(
        identity, chunked_head("POST", "/v3/auth/tokens"), endless_chunked_body()))
    # unauthenticated, on routes that authenticate first
    for address, path in ((network, "/v2.0/networks"), (image, "/v2/images")):
        assert_refused_over_limit(send_while_reading(
            address, chunked_head("POST", path), endless_chunked_body()))
    # authenticated: the same ceiling
    assert_refused_over_limit(send_while_reading(
        network, chunked_head("POST", "/v2.0/networks", token), endless_chunked_body()))
    # a small chunked body is read once and works (bottle decoded it a second time: 400)
    made = small_chunked(identity, "POST", "/v3/auth/tokens", token_request())
    assert made.status == 201, made
    # the image upload streams more than 1 MiB, but only for an authenticated caller:
    # an anonymous one is answered at once, and its body is not read to the end
    for head in (chunked_head("PUT", "/v2/images/x/file"),
                 "PUT /v2/images/x/file HTTP/1.1\r\nHost: haven\r\n"
                 f"Content-Length: {8 << 30}\r\n\r\n"):
        refused = send_while_reading(image, head, endless_chunked_body())
        assert refused.status == 401 and refused.closed, refused
    # ... and an authenticated one streams past 1 MiB into the store
    made = requests.post(f"http://{image}/v2/images", timeout=30, headers={
        "X-Auth-Token": token}, json={"name": "c", "disk_format": "raw",
                                      "container_format": "bare"})
    data = os.urandom(3 * MiB)
    stored = send_while_reading(image, chunked_head(
        "PUT", f"/v2/images/{made.json()['id']}/file", token, last=True),
        iter([_chunk(data[:MiB]), _chunk(data[MiB:]), b"0\r\n\r\n"]))
    assert stored.status == 204, stored
    shown = requests.get(f"http://{image}/v2/images/{made.json()['id']}", timeout=30,
                         headers={"X-Auth-Token": token}).json()
    assert shown["status"] == "active" and shown["size"] == len(data)


def test_bodies_are_bounded_under_cheroot(services: Services) -> None:
    check_bodies_are_bounded(services.cfg.identity.listen, services.cfg.image.listen,
                             services.cfg.network.listen, services.admin_token)


def test_image_upload_limit_is_its_own(services: Services) -> None:
    """More than 1 MiB is fine for an image (streamed to the store); a declared length
    over the configured maximum is refused before a byte is read."""
    image = services.call("POST", "image", "/v2/images", json={
        "name": "big", "disk_format": "raw", "container_format": "bare"}).json()
    path = f"/v2/images/{image['id']}/file"
    head = (f"PUT {path} HTTP/1.1\r\nHost: haven\r\nX-Auth-Token: {services.admin_token}\r\n"
            f"Content-Length: {(services.cfg.image.max_image_size_gb << 30) + 1}\r\n\r\n")
    refused = send_while_reading(services.cfg.image.listen, head, endless_chunked_body())
    assert refused.status == 413 and b"limit" in refused.body, refused
    data = os.urandom(3 * MiB)
    answer = send_while_reading(services.cfg.image.listen, chunked_head(
        "PUT", path, services.admin_token, last=True), iter([_chunk(data), b"0\r\n\r\n"]))
    assert answer.status == 204, answer
    shown = services.call("GET", "image", f"/v2/images/{image['id']}").json()
    assert shown["status"] == "active" and shown["size"] == len(data)


# ---- gunicorn: what cluster nodes run (`haven serve SERVICE --workers N`) -------------

@dataclass
class GunicornCloud:
    identity: str
    image: str
    network: str
    token: str


def _wait_serving(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + WATCHDOG
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url} exited:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(url, timeout=5).status_code == 200:
                return
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def gunicorn_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornCloud]:
    tmp = tmp_path_factory.mktemp("gunicorn")
    ports = {name: free_port() for name in ("identity", "image", "network")}
    common = ["--state-dir", str(tmp / "state"), "--set", "bus.driver=local",
              "--set", "log.level=WARNING",
              *(arg for name, port in ports.items()
                for arg in ("--set", f"{name}.listen=127.0.0.1:{port}"))]
    env = dict(os.environ, HAVEN_ADMIN_PASSWORD=ADMIN_PASSWORD)
    subprocess.run([HAVEN, "bootstrap", *common], check=True, env=env, capture_output=True,
                   timeout=120)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, port in ports.items():
            log = tmp / f"{name}.log"
            with open(log, "wb") as out:
                procs.append(subprocess.Popen(
                    [HAVEN, "serve", name, "--workers", "2", "--threads", "4", *common],
                    env=env, stdout=out, stderr=out, start_new_session=True))
            _wait_serving(procs[-1], f"http://127.0.0.1:{port}/healthcheck", log)
        token = requests.post(f"http://127.0.0.1:{ports['identity']}/v3/auth/tokens",
                              data=token_request(), timeout=30,
                              headers={"Content-Type": "application/json"})
        assert token.status_code == 201, token.text
        yield GunicornCloud(*(f"127.0.0.1:{ports[n]}" for n in ("identity", "image",
                                                                "network")),
                            token.headers["X-Subject-Token"])
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.mark.live
def test_bodies_are_bounded_under_gunicorn(gunicorn_cloud: GunicornCloud) -> None:
    c = gunicorn_cloud
    check_bodies_are_bounded(c.identity, c.image, c.network, c.token)


def test_image_and_network_lists_are_paged(services: Services) -> None:
    """Regression: image and network lists had no page size at all (every row, rendered,
    in one answer). Now a page holds at most ``api.max_limit`` items and links to the
    next one, in each service's own format (Glance's ``next``, Neutron's ``*_links``)."""
    for i in range(3):
        assert services.call("POST", "image", "/v2/images", json={
            "name": f"i{i}", "disk_format": "raw", "container_format": "bare"}).ok
        assert services.call("POST", "network", "/v2.0/networks", json={
            "network": {"name": f"n{i}"}}).ok
    want_images = {i["id"] for i in services.call("GET", "image", "/v2/images").json()["images"]}
    want_nets = {n["id"] for n in services.call("GET", "network",
                                                "/v2.0/networks").json()["networks"]}
    assert len(want_images) == 3 and len(want_nets) == 4  # and the provider network
    services.cfg.api.max_limit = 2
    try:
        seen, path = [], "/v2/images?limit=500"
        while path:
            page = services.call("GET", "image", path).json()
            assert len(page["images"]) <= 2
            seen += [i["id"] for i in page["images"]]
            path = page.get("next")
        assert sorted(seen) == sorted(want_images)
        seen, url = [], services.url("network") + "/v2.0/networks"
        while url:
            body = services.call("GET", "network", url[len(services.url("network")):]).json()
            assert len(body["networks"]) <= 2
            seen += [n["id"] for n in body["networks"]]
            url = next((link["href"] for link in body.get("networks_links", [])
                        if link["rel"] == "next"), None)
        assert sorted(seen) == sorted(want_nets)
        bad = services.call("GET", "network", "/v2.0/ports?limit=-3")
        assert bad.status_code == 400 and "'limit'" in bad.text
    finally:
        services.cfg.api.max_limit = 1000
