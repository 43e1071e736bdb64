"""The failover benchmark's client of the VIP: the first read and the first
acknowledged write after the fault. Run in the lab's switch namespace (the only
place that reaches the VIP):

``python -m tests.bench.failover_probe AUTH_URL PASSWORD OUT``

1. gets a token, and makes one write before the fault (a figure for a write path
   that never worked would mean nothing); then writes ``{"ready": t}`` to OUT;
2. once OUT.go exists (the fault is done), two threads poll every 100 ms until each
   succeeds once, appending to OUT:

   * ``{"ok_read": t}``: the first 200 of ``GET /v2.1/flavors`` (compute API, the
     database readable);
   * ``{"ok_write": t, "id": ...}``: the first 201 of ``POST /v2.0/networks`` (the
     network API commits a row: Galera's primary component on the survivors must
     accept a write, not only serve a read). No Haven API waits on RabbitMQ before
     answering a write (the bus only carries nudges; the database is the truth,
     see core/compute/servers.py), so the database commit is what an acknowledged
     write needs;

   each change of symptom while failing is logged (``{"t", "kind", "failing"}``) for
   the post-mortem of a slow run;
3. reads the network back: ``{"write_confirmed": true}``, or false when the API says
   404 for a create it acknowledged (a lost write: the bench fails the run).

Timestamps are this host's clock (the bench's clock): one kernel for all.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from tests.lab.vip_client import token

TIMEOUT = (0.5, 3.0)  # connect, read: a dead VIP holder must not stall a poll for long
INTERVAL = 0.1
CONFIRM_S = 120.0


class Log:
    """OUT, one JSON document a line, written by both threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()

    def write(self, doc: dict[str, Any]) -> None:
        with self.lock, self.path.open("a") as f:
            f.write(json.dumps(doc) + "\n")


def create_network(url: str, headers: dict[str, str]) -> tuple[str, str | None]:
    """One create: (outcome, the new network's id on a 201)."""
    name = f"failover-probe-{uuid.uuid4().hex[:8]}"
    try:
        r = requests.post(url, json={"network": {"name": name}}, headers=headers,
                          timeout=TIMEOUT)
    except requests.RequestException as exc:
        return type(exc).__name__, None
    if r.status_code == 201:
        return "created", str(r.json()["network"]["id"])
    return f"http {r.status_code}", None


def until_ok(kind: str, attempt: Any, log: Log) -> tuple[float, str | None]:
    """Call ``attempt`` every INTERVAL until it succeeds; (when it did, its id)."""
    last = None
    while True:
        outcome, ident = attempt()
        if outcome in ("ok", "created"):
            return time.time(), ident
        if outcome != last:
            log.write({"t": time.time(), "kind": kind, "failing": outcome})
            last = outcome
        time.sleep(INTERVAL)


def read_once(url: str, headers: dict[str, str]) -> tuple[str, None]:
    try:
        status = requests.get(url, headers=headers, timeout=TIMEOUT).status_code
    except requests.RequestException as exc:
        return type(exc).__name__, None
    return ("ok" if status == 200 else f"http {status}"), None


def confirm(url: str, headers: dict[str, str]) -> bool:
    """Whether the acknowledged network is there: True on 200, False on 404; an answer
    that says neither (a timeout, a 5xx) is asked again, and after CONFIRM_S the write
    counts as not confirmed (fail closed)."""
    deadline = time.monotonic() + CONFIRM_S
    while time.monotonic() < deadline:
        try:
            status = requests.get(url, headers=headers, timeout=TIMEOUT).status_code
        except requests.RequestException:
            status = 0
        if status in (200, 404):
            return status == 200
        time.sleep(0.5)
    return False


def probe(auth_url: str, password: str, out: Path) -> None:
    tok, urls = token(auth_url, password)
    headers = {"X-Auth-Token": tok}
    read_url = urls["compute"].rstrip("/") + "/flavors"
    write_url = urls["network"].rstrip("/") + "/v2.0/networks"
    log = Log(out.with_suffix(".part"))
    warmup, _ = until_ok("warm-up write", lambda: create_network(write_url, headers), log)
    log.write({"ready": time.time(), "warmup_write": warmup})
    log.path.rename(out)  # the bench waits for OUT: it appears complete
    log.path = out
    go = out.with_suffix(".go")
    while not go.exists():
        time.sleep(0.02)
    results: dict[str, tuple[float, str | None]] = {}

    def run(kind: str, attempt: Any) -> None:
        results[kind] = until_ok(kind, attempt, log)

    threads = [threading.Thread(target=run, args=("read", lambda: read_once(read_url, headers))),
               threading.Thread(target=run, args=("write",
                                                  lambda: create_network(write_url, headers)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.write({"ok_read": results["read"][0]})
    ident = results["write"][1]
    log.write({"ok_write": results["write"][0], "id": ident})
    log.write({"write_confirmed": confirm(f"{write_url}/{ident}", headers)})


if __name__ == "__main__":
    probe(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
