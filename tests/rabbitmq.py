"""A throwaway RabbitMQ broker for tests: Debian's rabbitmq-server, isolated from everything.

Each broker gets its own node name, its own free loopback ports (AMQP, Erlang
distribution, the ``rabbitmqctl`` distribution range) and its own ``epmd`` on a
free port, so two test runs on one machine (or a real broker on 5672/4369)
never meet. Its mnesia, log and config files live under one temp directory and
its HOME there holds its own Erlang cookie. Nothing listens beyond 127.0.0.1.

``restart()`` keeps the data directory and the node name, so durable quorum
queues and their messages survive it, as they would a real broker restart.

Usage::

    broker = RabbitMQ(tmp_dir)
    broker.start()            # returns once it accepts AMQP connections
    broker.url                # amqp://guest:guest@127.0.0.1:PORT/%2F
    broker.restart()
    broker.stop()             # graceful stop, then the process group is killed
    broker.close()            # stop, and end the private epmd too
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")  # not /usr/sbin: that wrapper su's and drops the env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class RabbitMQ:
    """One single-node broker in ``base`` (created if missing)."""

    def __init__(self, base: Path, extra_conf: str = "") -> None:
        if not (RABBITMQ_BIN / "rabbitmq-server").exists():
            raise RuntimeError("rabbitmq-server is not installed: run appliance/setup.sh test")
        self.base = base
        self.node = f"haven-test-{uuid.uuid4().hex[:8]}@localhost"
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.ctl_dist_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None
        self.start_seconds: list[float] = []  # how long each start took (reported by tests)
        for sub in ("home", "mnesia", "log"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "enabled_plugins").write_text("[].\n")  # no management plugin: faster boot
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            "loopback_users.guest = true\n"
            "log.console = false\n"
            "log.file.level = info\n"
            # the sandbox disk may be fairly full; a disk alarm would block publishers
            "disk_free_limit.absolute = 50MB\n"
            + extra_conf
        )

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    @property
    def log_file(self) -> Path:
        return self.base / "log" / f"{self.node}.log"

    def env(self) -> dict[str, str]:
        """The environment both rabbitmq-server and rabbitmqctl need to find this node."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        b = self.base
        env.update({
            "HOME": str(b / "home"),  # the Erlang cookie is created here
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_CTL_DIST_PORT_MIN": str(self.ctl_dist_port),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(self.ctl_dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(b / "rabbitmq-env.conf"),  # absent: skip /etc's
            "RABBITMQ_CONFIG_FILE": str(b / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(b / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(b / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(b / "plugins-expand"),
            "RABBITMQ_MNESIA_BASE": str(b / "mnesia"),
            "RABBITMQ_LOG_BASE": str(b / "log"),
            "RABBITMQ_PID_FILE": str(b / "rabbitmq.pid"),
            # distribution on loopback only (the AMQP listener is in rabbitmq.conf)
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_CTL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        })
        return env

    def _start_epmd(self) -> None:
        """Our own epmd, in the foreground, so we own its pid (erl would spawn a daemon)."""
        if self.epmd is not None and self.epmd.poll() is None:
            return
        epmd = shutil.which("epmd") or "/usr/bin/epmd"
        self.epmd = subprocess.Popen(
            [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            env=self.env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not _port_open(self.epmd_port):
            if self.epmd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"epmd did not start on port {self.epmd_port}")
            time.sleep(0.05)

    def start(self, timeout: float = 60.0) -> float:
        """Start the node; return once it accepts AMQP connections (the seconds it took)."""
        import pika

        if self.process is not None and self.process.poll() is None:
            return 0.0
        started = time.monotonic()
        self._start_epmd()
        out = (self.base / "log" / "server.out").open("ab")
        self.process = subprocess.Popen(
            [str(RABBITMQ_BIN / "rabbitmq-server")], cwd=self.base, env=self.env(),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)  # its own process group: stop() kills erl and children
        out.close()
        params = pika.URLParameters(self.url + "?connection_attempts=1&socket_timeout=2")
        deadline = started + timeout
        while True:
            # rabbitmqctl await_startup fails at once while the node is not registered
            # in epmd and costs an Erlang VM start per try; an AMQP handshake is the real
            # readiness test and is cheap
            if _port_open(self.amqp_port):
                try:
                    pika.BlockingConnection(params).close()
                    break
                except pika.exceptions.AMQPError:
                    pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rabbitmq-server did not start:\n{self.tail_log()}")
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        self.start_seconds.append(elapsed)
        return elapsed

    def stop(self, timeout: float = 30.0) -> None:
        """Stop gracefully (SIGTERM: the script runs erl's graceful shutdown, like
        ``rabbitmqctl stop`` without starting a second Erlang VM), then kill what remains."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        # erl_child_setup and friends share the group; nothing of the node may survive
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _port_open(self.amqp_port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the whole node at once (a crash, not a shutdown); data stays on disk."""
        proc, self.process = self.process, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def restart(self) -> float:
        """Stop and start again with the same data directory (durable queues survive)."""
        self.stop()
        return self.start()

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl`` against this node (costs ~1 s: it boots an Erlang VM)."""
        return subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args], env=self.env(),
            cwd=self.base, capture_output=True, text=True, timeout=timeout, check=False)

    def close(self) -> None:
        """Stop the node and our epmd."""
        self.stop()
        epmd, self.epmd = self.epmd, None
        if epmd is not None and epmd.poll() is None:
            epmd.terminate()
            try:
                epmd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                epmd.kill()
                epmd.wait(timeout=10)

    def tail_log(self, chars: int = 3000) -> str:
        parts = []
        for path in (self.base / "log" / "server.out", self.log_file):
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)
