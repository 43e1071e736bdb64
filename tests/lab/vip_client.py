"""A lab client of the VIP, run in the switch namespace (the only place that reaches it).

``python -m tests.lab.vip_client probe AUTH_URL PASSWORD OUT``
    gets a token, writes ``{"ready": t}``, then, once OUT.go exists, calls an
    authenticated API every 100 ms until one answers 200 and writes ``{"ok": t}``:
    the failover benchmark's "first successful authenticated call".

The write-judging churn of the power-loss test is tests/lab/writes.py (with its
ledger's judge, tests/lab/ledger.py); ``token`` serves both.

Plain ``requests`` with short timeouts: a connection to a dead VIP holder must not
stall the client for long, as it would a user.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import requests

TIMEOUT = (1.0, 3.0)  # connect, read


def token(auth_url: str, password: str) -> tuple[str, dict[str, str]]:
    body: dict[str, Any] = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}
    while True:
        try:
            r = requests.post(f"{auth_url}/auth/tokens", json=body, timeout=TIMEOUT)
            if r.status_code == 201:
                catalog = r.json()["token"]["catalog"]
                urls = {e["type"]: ep["url"] for e in catalog for ep in e["endpoints"]
                        if ep["interface"] == "public"}
                return r.headers["X-Subject-Token"], urls
        except requests.RequestException:
            pass
        time.sleep(0.5)


def probe(auth_url: str, password: str, out: Path) -> None:
    tok, urls = token(auth_url, password)
    url = urls["compute"].rstrip("/") + "/flavors"
    out.write_text(json.dumps({"ready": time.time()}) + "\n")
    go = out.with_suffix(".go")
    while not go.exists():
        time.sleep(0.05)
    last = None
    with out.open("a") as log:
        while True:
            try:
                status = requests.get(url, headers={"X-Auth-Token": tok},
                                      timeout=(0.5, 2.0)).status_code
                if status == 200:
                    break
                outcome = f"http {status}"
            except requests.RequestException as exc:
                outcome = type(exc).__name__
            if outcome != last:  # each change of symptom, for the post-mortem of a slow run
                log.write(json.dumps({"t": time.time(), "failing": outcome}) + "\n")
                log.flush()
                last = outcome
            time.sleep(0.1)
        log.write(json.dumps({"ok": time.time()}) + "\n")


def main(argv: list[str]) -> None:
    if argv[0] == "probe":
        probe(argv[1], argv[2], Path(argv[3]))
    else:
        raise SystemExit(f"unknown mode {argv[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
