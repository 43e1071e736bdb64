"""``haven evacuator run`` (the controller process) and ``haven evacuation ...``
(what operators read and do: list, show with phase timings, release a storm hold,
abort an event)."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from typing import Any

from core.common.cliutil import UsageError, common_options, config_from_args, open_database
from ha.evacuator.env import EventRecord, InstanceRecord

PHASES = (("fenced_at", "fenced"), ("fence_confirmed_at", "fence confirmed"),
          ("forced_down_at", "service forced down"), ("first_rebuild_at", "first rebuild"),
          ("last_rebuild_at", "last rebuild"), ("all_active_at", "all active"),
          ("finished_at", "finished"), ("reenabled_at", "host re-enabled"))


def phase_timings(ev: EventRecord) -> dict[str, float]:
    """Seconds from failure detection to each phase reached (the operator's view)."""
    return {label: round(getattr(ev, name) - ev.detected_at, 2)
            for name, label in PHASES if getattr(ev, name) is not None}


def event_doc(ev: EventRecord, instances: list[InstanceRecord] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {**asdict(ev), "state": ev.state.value, "alerts": list(ev.alerts),
                           "phases_s": phase_timings(ev)}
    if instances is not None:
        doc["instances"] = [{**asdict(r), "state": r.state.value} for r in instances]
    return doc


def _env(args: argparse.Namespace) -> Any:
    from core.common.clients import ServiceClients
    from ha.evacuator.real import RealEnv

    cfg = config_from_args(args)
    return RealEnv(cfg, open_database(cfg), ServiceClients(cfg))


def _event(env: Any, ident: str) -> EventRecord:
    if not ident.isdigit():
        raise UsageError(f"event id must be a number, got {ident!r}")
    ev = env.event(int(ident))
    if ev is None:
        raise UsageError(f"no evacuation event {ident}")
    return ev


def cmd_list(args: argparse.Namespace) -> int:
    events = _env(args).all_events()
    if args.json:
        print(json.dumps([event_doc(e) for e in events], indent=2))
        return 0
    print(f"{'ID':>4}  {'HOST':<12} {'STATE':<18} {'DETECTED':<20} PHASES (s after detection)")
    for ev in events:
        phases = ", ".join(f"{k} {v:g}" for k, v in phase_timings(ev).items())
        detected = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ev.detected_at))
        print(f"{ev.id:>4}  {ev.host:<12} {ev.state.value:<18} {detected:<20} {phases}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    env = _env(args)
    ev = _event(env, args.id)
    records = list(env.instance_records(ev.id))
    doc = event_doc(ev, records)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"event {ev.id}: host {ev.host}, {ev.state.value}"
          + (f" ({ev.reason})" if ev.reason else ""))
    for label, seconds in doc["phases_s"].items():
        print(f"  {label:<22} +{seconds:.2f} s")
    for r in records:
        took = (f" in {r.finished_at - r.started_at:.1f} s"
                if r.finished_at and r.started_at else "")
        print(f"  {r.instance_id}  {r.name:<16} {r.state.value:<10} {r.source} -> "
              f"{r.target or '-'}  priority {r.priority}, attempts {r.attempts}{took}"
              + (f"  ({r.error})" if r.error else ""))
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from ha.evacuator.controller import operator_release

    env = _env(args)
    if not operator_release(env, _event(env, args.id)):
        raise UsageError(f"event {args.id} is not held")
    print(f"event {args.id} released: it goes on despite the storm threshold")
    return 0


def cmd_abort(args: argparse.Namespace) -> int:
    from ha.evacuator.controller import operator_abort

    env = _env(args)
    if not operator_abort(env, _event(env, args.id)):
        raise UsageError(f"event {args.id} is already finished")
    print(f"event {args.id} aborted")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import threading

    from core.common.logs import setup_logging
    from core.common.server import wait_for_signal
    from ha.evacuator import daemon
    from ha.evacuator.wake import Pacer

    cfg = config_from_args(args)
    setup_logging(cfg.log.level, cfg.log.file)
    pacer = Pacer(cfg.evacuator.interval)
    worker = threading.Thread(target=daemon.run, args=(cfg, open_database(cfg), pacer),
                              name="evacuator", daemon=True)
    worker.start()
    try:
        wait_for_signal()
    finally:
        pacer.stop()
        worker.join(timeout=10)
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("evacuator", help="the evacuation controller").add_subparsers(
        dest="evacuator_cmd", required=True)
    run = p.add_parser("run", help="run the controller in the foreground (Pacemaker runs "
                       "one, as ocf:haven:haven-evacuator)")
    common_options(run)
    run.set_defaults(func=cmd_run)
    ev = sub.add_parser("evacuation", help="evacuation events: list, show, release, abort"
                        ).add_subparsers(dest="evacuation_cmd", required=True)
    q = ev.add_parser("list", help="events, newest first, with phase timings")
    common_options(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_list)
    q = ev.add_parser("show", help="one event: phases and every instance")
    common_options(q)
    q.add_argument("id")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_show)
    q = ev.add_parser("release", help="let a storm-held event go on")
    common_options(q)
    q.add_argument("id")
    q.set_defaults(func=cmd_release)
    q = ev.add_parser("abort", help="stop an event")
    common_options(q)
    q.add_argument("id")
    q.set_defaults(func=cmd_abort)
