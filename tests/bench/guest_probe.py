"""The guest-networking benchmark's observer outside the cloud: run in the lab's switch
namespace (on the provider network, where floating IPs and the VIP are reached from).

``python -m tests.bench.guest_probe launch AUTH_URL PASSWORD_FILE SPEC OUT``
    SPEC (JSON): ``{"image", "flavor", "key_name", "user_data" (base64), "servers":
    [{"name", "port", "fip"}]}``. Gets a token, then creates every server at once (one
    thread each, ``POST /servers`` with its pre-made port) and polls each floating IP
    every 0.1 s until it answers SSH; writes ``{name: {"t_create", "t_answer"}}`` to
    OUT (``t_answer`` null if none within 600 s).

``python -m tests.bench.guest_probe watch OUT INTERVAL [--ssh IP]... [--api AUTH_URL
PASSWORD_FILE]``
    Probes every target every INTERVAL seconds until OUT.stop exists, and appends one
    JSON line to OUT per change of a target's state: ``{"target", "t", "ok",
    "last_ok", "why"}`` (``last_ok``: its last answer before a failure). Writes
    ``{"ready": t}`` first, once every target has answered.

An SSH answer is the server's identification line (``SSH-2.0-...``) read after a TCP
connect to port 22: the guest itself answering, through the router's DNAT, not the
router or an ARP proxy. An API answer is a 200 of ``GET /flavors`` with a token taken
before (the compute API reading its database through the VIP, as
tests/bench/failover.py's reads). Both are probed the same way: the same loop, the
same interval, one thread per target, this host's clock (one kernel for the lab).
The password is read from a file, never passed as an argument.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

from tests.lab.vip_client import token

CONNECT_S = 0.5  # a dead target must not stall a probe for long
BANNER_S = 1.5
API_TIMEOUT = (0.5, 3.0)
LAUNCH_INTERVAL = 0.1
LAUNCH_TIMEOUT_S = 600.0


def ssh_answers(ip: str) -> tuple[bool, str]:
    """Whether ``ip``:22 sends an SSH identification line; why not if not."""
    try:
        with socket.create_connection((ip, 22), timeout=CONNECT_S) as sock:
            sock.settimeout(BANNER_S)
            banner = sock.recv(64)
    except OSError as exc:
        return False, type(exc).__name__
    return (True, "") if banner.startswith(b"SSH-") else (False, f"banner {banner[:16]!r}")


class Api:
    """The compute API through the VIP, with a token taken before the fault."""

    def __init__(self, auth_url: str, password_file: str) -> None:
        tok, urls = token(auth_url, Path(password_file).read_text().strip())
        self.headers = {"X-Auth-Token": tok}
        self.compute = urls["compute"].rstrip("/")

    def answers(self) -> tuple[bool, str]:
        try:
            status = requests.get(f"{self.compute}/flavors", headers=self.headers,
                                  timeout=API_TIMEOUT).status_code
        except requests.RequestException as exc:
            return False, type(exc).__name__
        return (status == 200), f"http {status}"


class Log:
    def __init__(self, path: Path) -> None:
        self.path, self.lock = path, threading.Lock()

    def write(self, doc: dict[str, Any]) -> None:
        with self.lock, self.path.open("a") as f:
            f.write(json.dumps(doc) + "\n")


def launch(auth_url: str, password_file: str, spec_path: Path, out: Path) -> None:
    spec = json.loads(spec_path.read_text())
    api = Api(auth_url, password_file)
    results: dict[str, dict[str, Any]] = {}

    def one(server: dict[str, str]) -> None:
        body = {"server": {"name": server["name"], "imageRef": spec["image"],
                           "flavorRef": spec["flavor"], "key_name": spec["key_name"],
                           "user_data": spec["user_data"],
                           "networks": [{"port": server["port"]}]}}
        t_create = time.time()
        r = requests.post(f"{api.compute}/servers", json=body, headers=api.headers,
                          timeout=(5, 60))
        doc: dict[str, Any] = {"t_create": t_create, "status": r.status_code,
                               "t_answer": None}
        results[server["name"]] = doc
        if r.status_code != 202:
            doc["error"] = r.text[:300]
            return
        doc["id"] = r.json()["server"]["id"]
        deadline = t_create + LAUNCH_TIMEOUT_S
        while time.time() < deadline:
            ok, _ = ssh_answers(server["fip"])
            if ok:
                doc["t_answer"] = time.time()
                return
            time.sleep(LAUNCH_INTERVAL)

    threads = [threading.Thread(target=one, args=(s,)) for s in spec["servers"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.write_text(json.dumps(results))


def watch(out: Path, interval: float, ssh: list[str], api: Api | None) -> None:
    targets: dict[str, Any] = {f"ssh {ip}": (lambda ip=ip: ssh_answers(ip)) for ip in ssh}
    if api is not None:
        targets["api"] = api.answers
    log = Log(out)
    stop = out.with_suffix(".stop")
    answered = threading.Event()
    seen: set[str] = set()
    lock = threading.Lock()

    def run(name: str, attempt: Any) -> None:
        state: bool | None = None
        last_ok: float | None = None
        while not stop.exists():
            ok, why = attempt()
            now = time.time()
            if ok != state:
                log.write({"target": name, "t": now, "ok": ok, "last_ok": last_ok,
                           "why": why})
                state = ok
            if ok:
                last_ok = now
                with lock:
                    seen.add(name)
                    if len(seen) == len(targets):
                        answered.set()
            time.sleep(interval)

    threads = [threading.Thread(target=run, args=item, daemon=True) for item in targets.items()]
    for t in threads:
        t.start()
    answered.wait()
    log.write({"ready": time.time()})
    for t in threads:
        t.join()


def main(argv: list[str]) -> None:
    if argv[0] == "launch":
        launch(argv[1], argv[2], Path(argv[3]), Path(argv[4]))
    elif argv[0] == "watch":
        out, interval, rest = Path(argv[1]), float(argv[2]), argv[3:]
        ssh: list[str] = []
        api = None
        while rest:
            if rest[0] == "--ssh":
                ssh.append(rest[1])
                rest = rest[2:]
            elif rest[0] == "--api":
                api = Api(rest[1], rest[2])
                rest = rest[3:]
            else:
                raise SystemExit(f"unknown argument {rest[0]}")
        watch(out, interval, ssh, api)
    else:
        raise SystemExit(f"unknown mode {argv[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
