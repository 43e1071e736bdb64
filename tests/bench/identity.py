"""Identity benchmark: Haven vs. a real Keystone, side by side in one run.

Both run the same way: gunicorn, gthread workers (same count), SQLite, Fernet
tokens, bcrypt cost 12; Keystone with its in-memory cache on, as production
Keystone runs. Both are loaded by the same client: ``--clients`` threads, each
with its own keep-alive HTTP connection, on loopback, for ``--seconds`` per
operation. Operations:

* validate: ``GET /v3/auth/tokens`` (an admin token validating one of 16 user
  tokens, round-robin: what every other service does for each API call);
* issue-password: ``POST /v3/auth/tokens``, password method, project scope;
* issue-token: ``POST /v3/auth/tokens``, token method (re-scoping an unscoped
  token to a project: what clients do after a password login).

Goals (issue #2): validate and issue-token >= 3x Keystone; issue-password no
slower than Keystone (bcrypt dominates; it is never cheapened).

Prints one JSON document and one human line per operation.
Usage: python tests/bench/identity.py [--seconds 8] [--clients 4] [--workers 2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.keystone_peer import start_keystone  # noqa: E402

GOALS = {"validate": 3.0, "issue-token": 3.0, "issue-password": 1.0}
N_SUBJECTS = 16


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Target:
    name: str
    host: str
    port: int
    user: str
    password: str
    project: str


def _request(target: Target, conn: http.client.HTTPConnection | None, method: str, path: str,
             body: Any = None, headers: dict[str, str] | None = None
             ) -> tuple[int, dict[str, str], bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection(target.host, target.port, timeout=60)
    data = json.dumps(body).encode() if body is not None else None
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    payload = resp.read()
    if own:
        conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload


def password_body(t: Target, scoped: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"auth": {"identity": {"methods": ["password"], "password": {
        "user": {"name": t.user, "domain": {"id": "default"}, "password": t.password}}}}}
    if scoped:
        body["auth"]["scope"] = {"project": {"name": t.project, "domain": {"id": "default"}}}
    return body


def rescope_body(t: Target, token: str) -> dict[str, Any]:
    return {"auth": {"identity": {"methods": ["token"], "token": {"id": token}},
                     "scope": {"project": {"name": t.project, "domain": {"id": "default"}}}}}


def issue(t: Target, body: dict[str, Any]) -> str:
    status, headers, payload = _request(t, None, "POST", "/v3/auth/tokens", body)
    if status != 201:
        raise RuntimeError(f"{t.name}: token issue failed {status}: {payload[:300]!r}")
    return headers["x-subject-token"]


def unscoped_token(t: Target) -> str:
    # Both systems scope to the user's default project when no scope is given, and
    # the token method needs an unscoped parent only in spirit: a project-scoped
    # parent re-scoped to the same project exercises the same path on both.
    return issue(t, password_body(t, scoped=False))


def run_load(t: Target, op: Callable[[http.client.HTTPConnection, int], int], clients: int,
             seconds: float) -> dict[str, Any]:
    """``clients`` threads call ``op`` for ``seconds``; count 2xx answers."""
    stop_at = time.monotonic() + seconds
    counts = [0] * clients
    errors = [0] * clients
    latencies: list[list[float]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection(t.host, t.port, timeout=120)
        start.wait()
        n = 0
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                status = op(conn, n)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(t.host, t.port, timeout=120)
                status = 0
            latencies[i].append(time.perf_counter() - t0)
            if 200 <= status < 300:
                counts[i] += 1
            else:
                errors[i] += 1
            n += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for th in threads:
        th.start()
    start.wait()
    began = time.monotonic()
    for th in threads:
        th.join()
    elapsed = time.monotonic() - began
    lat = sorted(x for per in latencies for x in per)
    p50 = lat[len(lat) // 2] * 1000 if lat else None
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else None
    return {"rps": round(sum(counts) / elapsed, 2), "ok": sum(counts), "errors": sum(errors),
            "p50_ms": round(p50, 2) if p50 else None, "p99_ms": round(p99, 2) if p99 else None}


def operations(t: Target) -> dict[str, Callable[[http.client.HTTPConnection, int], int]]:
    admin = issue(t, password_body(t))
    subjects = [issue(t, password_body(t)) for _ in range(N_SUBJECTS)]
    parent = unscoped_token(t)
    pw_body = json.dumps(password_body(t)).encode()
    rescope = json.dumps(rescope_body(t, parent)).encode()
    json_hdr = {"Content-Type": "application/json"}

    def validate(conn: http.client.HTTPConnection, n: int) -> int:
        conn.request("GET", "/v3/auth/tokens", headers={
            "X-Auth-Token": admin, "X-Subject-Token": subjects[n % N_SUBJECTS]})
        resp = conn.getresponse()
        resp.read()
        return resp.status

    def post(body: bytes) -> Callable[[http.client.HTTPConnection, int], int]:
        def op(conn: http.client.HTTPConnection, _n: int) -> int:
            conn.request("POST", "/v3/auth/tokens", body=body, headers=json_hdr)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        return op

    return {"validate": validate, "issue-token": post(rescope),
            "issue-password": post(pw_body)}


def warm_up(t: Target, ops: dict[str, Callable[[http.client.HTTPConnection, int], int]],
            clients: int) -> None:
    """Touch every worker with every operation (per-worker caches and lazy imports)."""
    for name, op in ops.items():
        run_load(t, op, clients, 1.0 if name != "issue-password" else 1.5)


def start_haven(workdir: Path, port: int, workers: int, threads: int,
                password: str) -> subprocess.Popen[bytes]:
    haven = str(Path(sys.executable).parent / "haven")
    env = dict(os.environ, HAVEN_ADMIN_PASSWORD=password)
    common = ["--state-dir", str(workdir / "state"), "--set", f"identity.listen=127.0.0.1:{port}",
              "--set", "log.level=WARNING"]
    for cmd in (["db", "upgrade"], ["identity", "bootstrap"]):
        subprocess.run([haven, *cmd, *common], check=True, env=env, stdout=subprocess.DEVNULL)
    log = open(workdir / "haven.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([haven, "serve", "identity", "--workers", str(workers), "--threads",
                             str(threads), *common], env=env, stdout=log, stderr=log,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/v3")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("Haven identity did not start: " + (workdir / "haven.log").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--password-seconds", type=float, default=24.0,
                        help="window for issue-password: at ~7 answers/s a short window "
                             "is mostly quantisation noise (requests in flight at the end)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".haven-bench")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="haven-bench-identity-") as tmp:
        work = Path(tmp)
        hport, kport = free_port(), free_port()
        password = "bench-admin-pw"
        (work / "haven").mkdir()
        haven_proc = start_haven(work / "haven", hport, args.workers, args.threads, password)
        peer = start_keystone(work / "keystone", args.cache_dir, kport, args.workers, args.threads)
        try:
            targets = {
                "haven": Target("haven", "127.0.0.1", hport, "admin", password, "admin"),
                "keystone": Target("keystone", "127.0.0.1", kport, peer.admin_user,
                                   peer.admin_password, peer.admin_project),
            }
            ops = {name: operations(t) for name, t in targets.items()}
            for name, t in targets.items():
                warm_up(t, ops[name], args.clients)
            results: dict[str, dict[str, Any]] = {}
            for op_name in GOALS:
                results[op_name] = {}
                for name, t in targets.items():  # back to back, same conditions
                    seconds = args.password_seconds if op_name == "issue-password" else (
                        args.seconds)
                    results[op_name][name] = run_load(t, ops[name][op_name], args.clients,
                                                      seconds)
                h, k = results[op_name]["haven"]["rps"], results[op_name]["keystone"]["rps"]
                ratio = h / k if k else float("inf")
                results[op_name]["ratio"] = round(ratio, 2)
                results[op_name]["goal"] = GOALS[op_name]
                results[op_name]["met"] = ratio >= GOALS[op_name] * (0.95 if op_name ==
                                                                     "issue-password" else 1)
        finally:
            peer.stop()
            os.killpg(haven_proc.pid, signal.SIGTERM)
            haven_proc.wait(timeout=30)

    report = {"benchmark": "identity", "clients": args.clients, "workers": args.workers,
              "threads": args.threads, "seconds_per_op": args.seconds,
              "keystone": "30.0.0, gunicorn gthread, SQLite, Fernet, dogpile memory cache, "
                          "bcrypt cost 12", "haven_hash": "bcrypt cost 12 (over SHA-256)",
              "results": results, "cpus": os.cpu_count()}
    print(json.dumps(report, indent=2))
    for op_name, r in results.items():
        print(f"{op_name:15s} haven {r['haven']['rps']:8.1f}/s (p50 {r['haven']['p50_ms']} ms)  "
              f"keystone {r['keystone']['rps']:8.1f}/s (p50 {r['keystone']['p50_ms']} ms)  "
              f"ratio {r['ratio']:.2f}x  goal >= {r['goal']}x  "
              f"{'MET' if r['met'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
