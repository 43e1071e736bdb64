"""Failover benchmark: power loss of the VIP node -> first read and first acknowledged
write through the VIP, at the product's default corosync token and at a tuned one.

Builds its own 3-node lab per token (fence action reboot, so the victim comes back),
bootstraps the whole stack, and adds the floor: a plain ``ocf:heartbeat:Dummy``
colocated with the VIP. Each run powers off the node holding both (link down, then
kill) and measures, from the kill:

* ``dummy``: the Dummy runs on a survivor (crm_mon polled every 0.25 s on one);
  what Pacemaker alone needs (detection, fencing, a start): the floor;
* ``read``: a client in the switch namespace, holding a token issued before the
  kill, gets its first 200 from ``GET /v2.1/flavors`` through the VIP (polled every
  0.1 s): detection, fencing, the VIP moved, the database readable;
* ``write``: the same client's first 201 from ``POST /v2.0/networks`` through the
  VIP (polled every 0.1 s, alongside the reads): Galera's primary component on the
  survivors accepting a commit. The network is read back afterwards; an
  acknowledged create that is gone fails the bench (tests/bench/failover_probe.py).

Every result records the corosync token the cluster reported running
(``corosync-cmapctl``). Between runs it waits for the victim to return and the
stack to run on all nodes again. Prints one JSON document and one human line per
token, then one line side by side.
Usage: python tests/bench/failover.py [--runs 5] [--tokens 3000,1500]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ha import crm  # noqa: E402
from ha.bootstrap.cib import API_SERVICES  # noqa: E402
from ha.evacuator.fence_history import fence_time  # noqa: E402
from ha.lab import cluster, faults, lifecycle, node, stack, state  # noqa: E402
from ha.lab.commands import LabError, wait_until  # noqa: E402
from tests.bench.benchlib import (  # noqa: E402
    DEFAULT_TOKENS,
    BenchError,
    check_token,
    parse_tokens,
    running_token,
    seconds,
    summary,
)

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


def probe_times(lines: list[str]) -> dict[str, Any]:
    """The probe's OUT: its first read and first acknowledged write (host clock),
    and whether that write was found again; BenchError if it is missing either or
    lost the write."""
    docs = [json.loads(line) for line in lines if line.strip()]
    found = {k: d[k] for d in docs for k in ("ok_read", "ok_write", "write_confirmed")
             if k in d}
    missing = {"ok_read", "ok_write", "write_confirmed"} - set(found)
    if missing:
        raise BenchError(f"the probe did not report {sorted(missing)}")
    if found["write_confirmed"] is not True:
        raise BenchError("an acknowledged network create was not found after the failover")
    return found


def one_run(lab_dir: Path, work: Path, i: int) -> dict[str, float]:
    v = wait_until(lambda: stack_everywhere(lab_dir), 400, "the stack on every node")
    st = state.load(lab_dir)
    assert st is not None
    victim = v.running_on("vip")[0]
    out = work / f"probe-{i}.jsonl"
    password = stack.paths(lab_dir).admin_password.read_text().strip()
    auth = stack.auth_url(st)
    probe = subprocess.Popen(stack.client_argv(st, [sys.executable, "-m",
                                                    "tests.bench.failover_probe",
                                                    auth, password, str(out)]),
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT),
                                            "REQUESTS_CA_BUNDLE": str(stack.paths(lab_dir).ca
                                                                      / "ca.crt")})
    try:
        wait_until(lambda: out.exists(), 120, "the probe's token and warm-up write")
        t0 = time.time()
        faults.kill(lab_dir, victim)
        out.with_suffix(".go").touch()
        t_kill_done = time.time()

        def dummy_moved() -> float | None:
            current = view(st, excluding=victim)
            moved = current.running_on("floor") if current else ()
            return time.time() if moved and victim not in moved else None
        t_dummy = wait_until(dummy_moved, 120, "the Dummy on a survivor", interval=0.25)
        probe.wait(timeout=300)
    finally:
        probe.kill()
    found = probe_times(out.read_text().splitlines())
    fenced = fence_completed(st, victim, t0)
    return {"victim": float(NODES.index(victim) + 1), "kill_s": t_kill_done - t0,
            "victim_was_dc": float(v.dc == victim),
            "fence_s": -1.0 if fenced is None else fenced - t0,
            "dummy_s": t_dummy - t0, "read_s": found["ok_read"] - t0,
            "write_s": found["ok_write"] - t0}


def fence_completed(st: state.LabState, victim: str, t0: float) -> float | None:
    """When the fence of ``victim`` after ``t0`` completed, as a survivor's fence
    history has it (to the second where Pacemaker prints whole seconds: then the end
    of that second): where a slow run's time went, detection and fencing or after."""
    observer = next(nd for nd in st.nodes.values() if nd.name != victim and node.running(nd))
    try:
        history = cluster.fence_history(observer)
    except LabError:  # a diagnostic only: the run's figures stand without it
        return None
    times = [fence_time(e.completed) for e in history
             if e.target == victim and e.succeeded and e.completed]
    after = [t for t in times if t is not None and t >= t0 - 1]
    return min(after) if after else None


def token_doc(token_ms: int, running_ms: int, runs: list[dict[str, float]]) -> dict[str, Any]:
    """One token's result: the token asked and reported, the figures' summaries."""
    return {
        "corosync_token_ms": token_ms, "corosync_token_running_ms": running_ms,
        "runs": len(runs),
        "dummy_floor_s": summary([r["dummy_s"] for r in runs]),
        "read_s": summary([r["read_s"] for r in runs]),
        "write_s": summary([r["write_s"] for r in runs]),
        "fence_s": summary([r["fence_s"] for r in runs if r["fence_s"] >= 0]),
        "read_minus_dummy_s": summary([r["read_s"] - r["dummy_s"] for r in runs]),
        "write_minus_read_s": summary([r["write_s"] - r["read_s"] for r in runs]),
        "per_run": runs,
    }


def human(doc: dict[str, Any]) -> str:
    return (f"failover at corosync token {doc['corosync_token_ms']} ms over {doc['runs']} "
            f"runs: first read through the VIP p50 {seconds(doc['read_s']['p50'])} (max "
            f"{seconds(doc['read_s']['max'])}); first acknowledged write p50 "
            f"{seconds(doc['write_s']['p50'])} (max {seconds(doc['write_s']['max'])}); "
            f"Dummy floor p50 {seconds(doc['dummy_floor_s']['p50'])}")


def side_by_side(docs: list[dict[str, Any]]) -> str:
    return "failover p50 read / write by token: " + "; ".join(
        f"{d['corosync_token_ms']} ms: {seconds(d['read_s']['p50'])} / "
        f"{seconds(d['write_s']['p50'])}" for d in docs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fault runs per token")
    parser.add_argument("--tokens", type=parse_tokens, default=parse_tokens(DEFAULT_TOKENS),
                        help=f"corosync tokens (ms), one lab each, side by side (default "
                             f"{DEFAULT_TOKENS}: the product's default, then a tuned one)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs: at least 1")
    return args


def bench_token(lab_dir: Path, work: Path, token_ms: int, n_runs: int) -> dict[str, Any]:
    runs: list[dict[str, float]] = []
    token_work = work / f"token-{token_ms}"
    token_work.mkdir()
    try:
        lifecycle.up(lab_dir, len(NODES), fence_action="reboot", token_ms=token_ms)
        stack.up_stack(lab_dir)
        st = state.load(lab_dir)
        assert st is not None
        first = st.nodes["node1"]
        running_ms = running_token(first)
        check_token(token_ms, running_ms)
        node.exec_in(first, ["pcs", "resource", "create", "floor", "ocf:heartbeat:Dummy",
                             "op", "monitor", "interval=5s"])
        node.exec_in(first, ["pcs", "constraint", "colocation", "add", "floor", "with", "vip",
                             "INFINITY"])
        for i in range(n_runs):
            result = one_run(lab_dir, token_work, i)
            runs.append(result)
            dc = " (the DC)" if result["victim_was_dc"] else ""
            print(f"token {token_ms} ms, run {i + 1}: node{int(result['victim'])}{dc} killed; "
                  f"fenced {result['fence_s']:.2f} s, Dummy "
                  f"on a survivor {result['dummy_s']:.2f} s, first read "
                  f"{result['read_s']:.2f} s, first acknowledged write {result['write_s']:.2f} s",
                  file=sys.stderr, flush=True)
    finally:
        lifecycle.down(lab_dir)
    return token_doc(token_ms, running_ms, runs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lab_dir = state.default_lab_dir()
    if lifecycle.busy_reason(lab_dir):
        print(f"a lab is up at {lab_dir}: run `haven lab down` first", file=sys.stderr)
        return 2
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"haven-failover-{os.getpid()}"
    work.mkdir()
    docs = [bench_token(lab_dir, work, token_ms, args.runs) for token_ms in args.tokens]
    print(json.dumps({"benchmark": "failover", "results": docs}, indent=2))
    for doc in docs:
        print(human(doc))
    print(side_by_side(docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
