"""Run the evacuation scenarios and diff their logs: ``python -m ha.evacuator.scenarios``.

One folder per scenario (``tests/scenarios/evacuation/NAME/``):

* ``README`` -- one line: what the scenario shows;
* ``hardware.yaml`` -- ``nodes`` (capacity, ``reserved``, ``hypervisor``), and
  optional ``timing`` (:class:`~ha.evacuator.sim.Timing`) and ``policy``
  (:class:`~ha.evacuator.controller.Policy`) overrides;
* ``instances.yaml`` -- ``instances`` (host, state, task, flavor size, metadata,
  group, rebuild_time) and ``groups`` (name: policy);
* ``cmds`` -- rounds, one per line, ``at SECOND COMMAND``::

    power NODE on|off          network NODE on|off        freeze NODE / thaw NODE
    fence NODE ok|fail|slow S  delete VM                  disk VM missing
    controller failover [S]    controller crash-after-evacuate
    api evacuate-fails N       operator release NODE      operator abort NODE
    end

* ``log.expect`` -- the expected log, reviewed by reading it.

The runner writes ``log.actual`` next to it and fails on any difference, on a
missing ``log.expect`` (it is never filled in silently: ``--write`` writes it,
for review in the diff), and on any safety invariant the world saw broken,
whatever the expected log says.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.compute.states import ACTIVE
from ha.evacuator.controller import Controller, Policy, operator_abort, operator_release
from ha.evacuator.sim import ControllerCrash, Host, Instance, SimEnv, Timing, World

SCENARIOS = Path(__file__).resolve().parents[2] / "tests" / "scenarios" / "evacuation"
TAIL = 60  # seconds simulated after the last command when there is no ``end``


class ScenarioError(ValueError):
    """A scenario folder is malformed (the message names the file and line)."""


@dataclass(frozen=True)
class Command:
    at: int
    words: tuple[str, ...]
    line: int


@dataclass
class Scenario:
    name: str
    hosts: list[Host]
    instances: list[Instance]
    groups: dict[str, str]
    timing: Timing
    policy: Policy
    commands: list[Command]
    end: int


@dataclass
class Outcome:
    lines: list[str]
    violations: list[str]


def _yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: expected a mapping")
    return data


def _build(cls: Callable[..., Any], data: dict[str, Any], where: str) -> Any:
    try:
        return cls(**data)
    except TypeError as exc:
        raise ScenarioError(f"{where}: {exc}") from exc


def load(folder: Path) -> Scenario:
    hardware = _yaml(folder / "hardware.yaml")
    inventory = _yaml(folder / "instances.yaml")
    hosts = [_build(Host, {"name": str(name), **(spec or {})}, f"hardware.yaml node {name}")
             for name, spec in (hardware.get("nodes") or {}).items()]
    instances = []
    for name, spec in (inventory.get("instances") or {}).items():
        spec = dict(spec or {})
        spec.setdefault("vm_state", spec.pop("state", ACTIVE))
        spec.setdefault("task_state", spec.pop("task", None))
        spec["metadata"] = {str(k): str(v) for k, v in (spec.get("metadata") or {}).items()}
        instances.append(_build(Instance, {"id": str(name), "name": str(name), **spec},
                                f"instances.yaml instance {name}"))
    commands = []
    for number, raw in enumerate((folder / "cmds").read_text().splitlines(), start=1):
        text = raw.split("#", 1)[0].split()
        if not text:
            continue
        if len(text) < 3 or text[0] != "at" or not text[1].isdigit():
            raise ScenarioError(f"{folder / 'cmds'}:{number}: expected 'at SECOND COMMAND'")
        commands.append(Command(int(text[1]), tuple(text[2:]), number))
    commands.sort(key=lambda c: (c.at, c.line))
    ends = [c.at for c in commands if c.words == ("end",)]
    last = max((c.at for c in commands), default=0)
    return Scenario(
        name=folder.name, hosts=hosts, instances=instances,
        groups={str(k): str(v) for k, v in (inventory.get("groups") or {}).items()},
        timing=_build(Timing, hardware.get("timing") or {}, "hardware.yaml timing"),
        policy=_build(Policy, hardware.get("policy") or {}, "hardware.yaml policy"),
        commands=[c for c in commands if c.words != ("end",)],
        end=ends[0] if ends else last + TAIL)


class Runner:
    """Steps the world and the controller, applying the commands at their second."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.world = World(scenario.hosts, scenario.instances, scenario.groups,
                           scenario.timing)
        self.env = SimEnv(self.world)
        self.controller: Controller | None = Controller(self.env, scenario.policy)
        self.restart_at: int | None = None

    def run(self) -> Outcome:
        by_time: dict[int, list[Command]] = {}
        for cmd in self.scenario.commands:
            by_time.setdefault(cmd.at, []).append(cmd)
        for t in range(self.scenario.end + 1):
            self.world.t = t
            for cmd in by_time.get(t, []):
                self.world.log("cmd", " ".join(cmd.words))
                self.apply(cmd)
            self.world.step()
            if self.controller is None and self.restart_at is not None and t >= self.restart_at:
                self.controller = Controller(self.env, self.scenario.policy)
                self.restart_at = None
                self.world.log("ctl", "a new controller starts, from the records")
            if self.controller is not None:
                try:
                    self.controller.do_one_iteration()
                except ControllerCrash as crash:
                    self.world.log("ctl", f"CRASH: {crash}")
                    self.controller, self.restart_at = None, t + 1
        self.summary()
        return Outcome(self.world.lines, self.world.violations)

    def apply(self, cmd: Command) -> None:
        w, words = self.world, cmd.words
        where = f"cmds:{cmd.line}"
        try:
            match words:
                case ("power", node, ("on" | "off") as how):
                    w.power(node, how == "on")
                case ("network", node, ("on" | "off") as how):
                    w.set_network(node, how == "on")
                case ("freeze", node):
                    w.freeze(node, True)
                case ("thaw", node):
                    w.freeze(node, False)
                case ("fence", node, ("ok" | "fail") as mode):
                    w.fence_device(node, mode)
                case ("fence", node, "slow", seconds):
                    w.fence_device(node, "slow", int(seconds))
                case ("delete", vm):
                    w.delete(vm)
                case ("disk", vm, "missing"):
                    w.instances[vm].disk_missing = True
                case ("controller", "failover", *gap):
                    self.controller = None
                    self.restart_at = w.t + (int(gap[0]) if gap else 0)
                case ("controller", "crash-after-evacuate"):
                    w.crash_after_evacuate = True
                case ("api", "evacuate-fails", count):
                    w.failing_evacuates = int(count)
                case ("operator", ("release" | "abort") as action, node):
                    self.operator(action, node)
                case _:
                    raise ScenarioError(f"{where}: unknown command {' '.join(words)!r}")
        except (KeyError, ValueError) as exc:
            if isinstance(exc, ScenarioError):
                raise
            raise ScenarioError(f"{where}: {' '.join(words)}: {exc!r}") from exc

    def operator(self, action: str, node: str) -> None:
        event = next((e for e in self.env.open_events() if e.host == node), None)
        if event is None:
            raise ScenarioError(f"operator {action} {node}: {node} has no open event")
        done = (operator_release if action == "release" else operator_abort)(self.env, event)
        self.world.log("cmd", f"operator {action} of event {event.id}: "
                       f"{'accepted' if done else 'refused'}")

    def summary(self) -> None:
        w, log = self.world, self.world.log
        for ev in self.env.all_events():
            def rel(at: float | None, base: float = ev.detected_at) -> str:
                return "-" if at is None else f"+{at - base:g}s"

            log("summary", f"event {ev.id} {ev.host} {ev.state.value}: detected "
                f"{ev.detected_at:g}, fence confirmed {rel(ev.fence_confirmed_at)}, first "
                f"rebuild {rel(ev.first_rebuild_at)}, last rebuild {rel(ev.last_rebuild_at)}, "
                f"all active {rel(ev.all_active_at)}, re-enabled {rel(ev.reenabled_at)}"
                + (f"; {ev.reason}" if ev.reason else ""))
            for r in self.env.instance_records(ev.id):
                detail = f" -> {r.target}" if r.target else ""
                if r.error and r.state.value != "done":
                    detail += f": {r.error}"
                log("summary", f"  {r.name} {r.state.value}{detail} "
                    f"(attempts {r.attempts}, priority {r.priority})")
        for inst in w.instances.values():
            running = [h.name for h in w.hosts.values()
                       if h.powered and h.domains.get(inst.id) == "running"]
            log("world", f"{inst.name} {inst.vm_state} on {inst.host}"
                + (f" ({inst.task_state})" if inst.task_state else "")
                + f"; running on {', '.join(running) or 'no host'}")
        for h in w.hosts.values():
            service = ("" if not h.hypervisor else
                       "; compute " + ("enabled" if h.enabled else "disabled")
                       + (", forced down" if h.forced_down else ""))
            log("world", f"{h.name} {'on' if h.powered else 'off'}, {h.membership.value}"
                + service)


def run_folder(folder: Path, write: bool = False) -> tuple[bool, str]:
    """Run one scenario; (passed, what to tell)."""
    outcome = Runner(load(folder)).run()
    actual = "\n".join(outcome.lines) + "\n"
    (folder / "log.actual").write_text(actual)
    expect_path = folder / "log.expect"
    problems = [f"invariant broken: {v}" for v in outcome.violations]
    if write:
        expect_path.write_text(actual)
        return not problems, "\n".join([f"{folder.name}: log.expect written; review it",
                                        *problems])
    if not expect_path.exists():
        problems.append(f"no log.expect: read {folder / 'log.actual'}, and if it tells the "
                        "right story, run with --write (or copy it)")
    else:
        expected = expect_path.read_text()
        if expected != actual:
            diff = difflib.unified_diff(expected.splitlines(), actual.splitlines(),
                                        "log.expect", "log.actual", lineterm="")
            problems.append("\n".join(diff))
    if problems:
        return False, f"{folder.name}: FAILED\n" + "\n".join(problems)
    return True, f"{folder.name}: ok"


def folders(root: Path = SCENARIOS) -> list[Path]:
    return sorted(p for p in root.iterdir() if (p / "cmds").is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ha.evacuator.scenarios",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--write", action="store_true",
                        help="write log.expect from this run (then review the diff)")
    parser.add_argument("scenarios", nargs="*", type=Path,
                        help=f"scenario folders (default: every folder in {SCENARIOS})")
    args = parser.parse_args(argv)
    failed = 0
    for folder in args.scenarios or folders():
        try:
            ok, message = run_folder(folder, args.write)
        except ScenarioError as exc:
            ok, message = False, f"{folder.name}: BAD SCENARIO: {exc}"
        print(message)
        failed += not ok
    print(f"{len(args.scenarios or folders()) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
