"""Failover benchmark: power loss of the VIP node -> first authenticated API call.

Builds its own 3-node lab (fence action reboot, so the victim comes back), bootstraps
the whole stack, and adds the floor: a plain ``ocf:heartbeat:Dummy`` colocated
with the VIP. Each run powers off the node holding both (link down, then kill) and
measures, from the kill:

* ``dummy``: the Dummy runs on a survivor (crm_mon polled every 0.25 s on one);
  what Pacemaker alone needs (detection, fencing, a start): the floor;
* ``api``: a client in the switch namespace, holding a token issued before the
  kill, gets its first 200 from ``GET /v2.1/flavors`` through the VIP (polled
  every 0.1 s): detection, fencing, the VIP moved, Galera writable on survivors.

Between runs it waits for the victim to return and the stack to run on all nodes
again. Prints one JSON document and one human line.
Usage: python tests/bench/failover.py [--runs 5] [--token 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ha import crm  # noqa: E402
from ha.bootstrap.cib import API_SERVICES  # noqa: E402
from ha.lab import cluster, faults, lifecycle, node, stack, state  # noqa: E402
from ha.lab.commands import wait_until  # noqa: E402

NODES = ["node1", "node2", "node3"]
SERVICES = [f"haven-{s}" for s in API_SERVICES]  # no hypervisors in this lab


def view(st: state.LabState, excluding: str | None = None) -> crm.ClusterView | None:
    for nd in st.nodes.values():
        if nd.name != excluding and node.running(nd):
            return cluster.view(nd, timeout=10)
    return None


def stack_everywhere(lab_dir: Path) -> crm.ClusterView | None:
    st = state.load(lab_dir)
    assert st is not None
    v = view(st)
    if v is None or v.online != NODES:
        return None
    ok = (set(v.promoted_on("galera")) == set(NODES)
          and all(set(v.running_on(s)) == set(NODES) for s in SERVICES)
          and v.running_on("vip") and v.running_on("floor") == v.running_on("vip"))
    return v if ok else None


def one_run(lab_dir: Path, work: Path, i: int) -> dict[str, float]:
    v = wait_until(lambda: stack_everywhere(lab_dir), 400, "the stack on every node")
    st = state.load(lab_dir)
    assert st is not None
    victim = v.running_on("vip")[0]
    out = work / f"probe-{i}.jsonl"
    password = stack.paths(lab_dir).admin_password.read_text().strip()
    auth = stack.auth_url(st)
    probe = subprocess.Popen(stack.client_argv(st, [sys.executable, "-m", "tests.lab.vip_client",
                                                    "probe", auth, password, str(out)]),
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT),
                                            "REQUESTS_CA_BUNDLE": str(stack.paths(lab_dir).ca
                                                                      / "ca.crt")})
    try:
        wait_until(lambda: out.exists(), 60, "the probe's token")
        t0 = time.time()
        faults.kill(lab_dir, victim)
        out.with_suffix(".go").touch()
        t_kill_done = time.time()

        def dummy_moved() -> float | None:
            current = view(st, excluding=victim)
            moved = current.running_on("floor") if current else ()
            return time.time() if moved and victim not in moved else None
        t_dummy = wait_until(dummy_moved, 120, "the Dummy on a survivor", interval=0.25)
        probe.wait(timeout=120)
    finally:
        probe.kill()
    t_api = next(json.loads(line)["ok"] for line in out.read_text().splitlines()
                 if "ok" in json.loads(line))
    return {"victim": float(NODES.index(victim) + 1), "kill_s": t_kill_done - t0,
            "dummy_s": t_dummy - t0, "api_s": t_api - t0}


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 2), "max": round(max(values), 2),
            "min": round(min(values), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--token", type=int, default=3000, help="corosync token (ms)")
    args = parser.parse_args()
    lab_dir = state.default_lab_dir()
    if lifecycle.busy_reason(lab_dir):
        print(f"a lab is up at {lab_dir}: run `haven lab down` first", file=sys.stderr)
        return 2
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"haven-failover-{os.getpid()}"
    work.mkdir()
    runs: list[dict[str, float]] = []
    try:
        lifecycle.up(lab_dir, len(NODES), fence_action="reboot", token_ms=args.token)
        stack.up_stack(lab_dir)
        st = state.load(lab_dir)
        assert st is not None
        first = st.nodes["node1"]
        node.exec_in(first, ["pcs", "resource", "create", "floor", "ocf:heartbeat:Dummy",
                             "op", "monitor", "interval=5s"])
        node.exec_in(first, ["pcs", "constraint", "colocation", "add", "floor", "with", "vip",
                             "INFINITY"])
        for i in range(args.runs):
            result = one_run(lab_dir, work, i)
            runs.append(result)
            print(f"run {i + 1}: node{int(result['victim'])} killed; Dummy on a survivor "
                  f"{result['dummy_s']:.2f} s, first API 200 {result['api_s']:.2f} s",
                  file=sys.stderr, flush=True)
    finally:
        lifecycle.down(lab_dir)
    doc: dict[str, Any] = {
        "benchmark": "failover", "runs": len(runs), "corosync_token_ms": args.token,
        "dummy_floor_s": summary([r["dummy_s"] for r in runs]),
        "api_s": summary([r["api_s"] for r in runs]),
        "api_minus_dummy_s": summary([r["api_s"] - r["dummy_s"] for r in runs]),
        "per_run": runs,
    }
    print(json.dumps(doc, indent=2))
    print(f"failover over {len(runs)} runs: first authenticated API call through the VIP "
          f"p50 {doc['api_s']['p50']:.2f} s (max {doc['api_s']['max']:.2f} s); Dummy floor "
          f"p50 {doc['dummy_floor_s']['p50']:.2f} s (max {doc['dummy_floor_s']['max']:.2f} s); "
          f"API - floor p50 {doc['api_minus_dummy_s']['p50']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
