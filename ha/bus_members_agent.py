"""ocf:haven:haven-bus-members: make this node's RabbitMQ a member of every quorum queue.

Why it exists: Pacemaker's ``rabbitmq-cluster`` agent wipes a node's broker
database on every start, so a node that comes back (after a fence, a restart)
rejoins the cluster as a member of no quorum queue; the queues run on the other
members with less redundancy until someone runs ``rabbitmq-queues grow``. This
agent is that someone: a clone ordered after and colocated with the broker, so
each time the broker starts on a node, the node is grown back into every quorum
queue. Queues declared later include every running node anyway.

* start: ``rabbitmq-queues grow rabbit@HOST all`` (retried while the broker
  settles), then a state file in /run (gone after a reboot, as it should be).
* stop: removes the state file; always succeeds.
* monitor: the state file is there (cheap: the CLI starts an Erlang VM, which
  costs a second of CPU, too much to spend every interval).
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from ha.ocf import Agent, Exit, OcfError


class BusMembersAgent:
    def __init__(self) -> None:
        agent = Agent(name="haven-bus-members", shortdesc="Grow the node's RabbitMQ into "
                      "every quorum queue", longdesc=__doc__ or "")
        agent.add_parameter("node", "RabbitMQ node name (default rabbit@HOSTNAME)")
        agent.add_parameter("state_dir", "Where the started marker lives", default="/run/haven")
        agent.add_parameter("command", "The rabbitmq-queues command",
                            default="/usr/sbin/rabbitmq-queues")
        agent.add_action("start", self.start, timeout=120)
        agent.add_action("stop", self.stop, timeout=20)
        agent.add_monitor(0, self.monitor, timeout=20, interval=60)
        agent.add_action("validate-all", self.validate, timeout=20)
        self.agent = agent

    def marker(self) -> Path:
        name = self.agent.instance.replace(":", "-")
        return Path(self.agent.param("state_dir") or "/run/haven") / f"{name}.started"

    def node(self) -> str:
        return self.agent.param("node") or f"rabbit@{socket.gethostname().split('.')[0]}"

    def validate(self) -> int:
        command = self.agent.param("command") or ""
        if not Path(command).is_file():
            raise OcfError(Exit.ERR_INSTALLED, f"{command} not found (install rabbitmq-server)")
        return Exit.SUCCESS

    def start(self) -> int:
        self.validate()
        argv = [self.agent.param("command") or "", "grow", self.node(), "all"]
        deadline = time.monotonic() + 90
        while True:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                    stdin=subprocess.DEVNULL)
            if result.returncode == 0:
                break
            if time.monotonic() > deadline:
                detail = (result.stderr.strip() or result.stdout.strip())[-300:]
                raise OcfError(Exit.ERR_GENERIC, f"rabbitmq-queues grow failed: {detail}")
            time.sleep(2)
        marker = self.marker()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{self.node()}\n")
        return Exit.SUCCESS

    def stop(self) -> int:
        self.marker().unlink(missing_ok=True)
        return Exit.SUCCESS

    def monitor(self) -> int:
        return Exit.SUCCESS if self.marker().exists() else Exit.NOT_RUNNING


def main() -> None:
    BusMembersAgent().agent.run()
