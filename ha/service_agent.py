"""The logic every Haven service's OCF agent shares (agents/ocf/* are thin).

A Haven service is one process started from the ``haven`` command with the
node's config file: ``haven serve identity`` and friends (gunicorn, API
services), or ``haven compute-agent``. The agent:

* start: validates, starts the process in its own session (so stop can end
  the whole group), records its pid, and waits until the service really
  answers (its ``/healthcheck`` says 200; for the compute agent, a fresh
  heartbeat; for the network agent, a completed round), bounded by the action's
  timeout. Starting a running service succeeds at once.
* stop: TERM to the process group, KILL after a grace period; success when
  nothing is left, also when nothing was running or the configuration is bad.
* monitor depth 0: the recorded process is alive (and is a haven process).
  depth 10: the service answers ``/healthcheck`` with 200 (database and bus
  reachable); for the compute agent, its heartbeat is fresh; for the network
  agent, its last complete round is recent.
* validate-all: the config file loads (ERR_CONFIGURED naming the bad key), the
  ``haven`` binary exists (ERR_INSTALLED).
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ha.ocf import Agent, Exit, OcfError

if TYPE_CHECKING:
    from core.common.config import HavenConfig

DEFAULT_BINARY = str(Path(sys.executable).parent / "haven")
API_SERVICES = {"identity": "identity", "compute-api": "compute", "image": "image",
                "network": "network"}


@dataclass
class ServiceProcess:
    """Where one agent instance keeps its pid and log."""

    instance: str
    run_dir: Path
    log_dir: Path

    @property
    def pidfile(self) -> Path:
        return self.run_dir / f"{self.instance}.pid"

    @property
    def logfile(self) -> Path:
        return self.log_dir / f"{self.instance}.log"

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def alive(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        state = stat.rsplit(")", 1)[1].split()[0]
        # An empty cmdline is a process still inside execve (Popen returns at the exec's
        # point of no return, before the new image's arguments are visible): it is ours.
        # A non-empty one must be a haven process, or the pid was reused by another.
        return state != "Z" and (not cmdline or b"haven" in cmdline)


def tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-400:]


class HavenServiceAgent:
    """Builds the OCF agent for one Haven service (``service`` as in API_SERVICES, or
    ``compute`` for the hypervisor's compute agent)."""

    def __init__(self, service: str, shortdesc: str) -> None:
        self.service = service
        agent = Agent(name=f"haven-{service}", shortdesc=shortdesc, longdesc=(
            f"Runs Haven's {service} service with the node's config file. " + (__doc__ or "")))
        agent.add_parameter("config", "Haven config file (YAML)", required=True,
                            content_type="string")
        agent.add_parameter("binary", "Path of the haven command", default=DEFAULT_BINARY)
        agent.add_parameter("run_dir", "Directory for the pid file", default="/run/haven")
        agent.add_parameter("log_dir", "Directory for the service log",
                            default="/var/log/haven")
        if service in API_SERVICES:
            agent.add_parameter("workers", "gunicorn worker processes", default="2",
                                content_type="integer")
            agent.add_parameter("threads", "threads per worker", default="4",
                                content_type="integer")
        agent.add_action("start", self.start, timeout=60)
        agent.add_action("stop", self.stop, timeout=30)
        agent.add_monitor(0, self.monitor_process, timeout=20, interval=10)
        agent.add_monitor(10, self.monitor_service, timeout=30, interval=30)
        agent.add_action("validate-all", self.validate, timeout=20)
        self.agent = agent

    # ---- helpers -------------------------------------------------------------------------
    def proc(self) -> ServiceProcess:
        a = self.agent
        return ServiceProcess(a.instance.replace(":", "-"), Path(a.param("run_dir") or
                                                                  "/run/haven"),
                              Path(a.param("log_dir") or "/var/log/haven"))

    def timeout_s(self, default: float) -> float:
        ms = self.agent.env.get("OCF_RESKEY_CRM_meta_timeout")
        return int(ms) / 1000 if ms and ms.isdigit() else default

    def load_config(self) -> HavenConfig:
        from core.common.config import ConfigError, load_config

        path = self.agent.param("config")
        if not path:
            raise OcfError(Exit.ERR_CONFIGURED, "parameter config is required")
        if not Path(path).is_file():
            raise OcfError(Exit.ERR_CONFIGURED, f"config file {path} does not exist")
        try:
            return load_config(path)
        except ConfigError as exc:
            raise OcfError(Exit.ERR_CONFIGURED, f"bad config: {exc}") from None

    def command(self) -> list[str]:
        binary = self.agent.param("binary") or DEFAULT_BINARY
        config = ["--config", str(self.agent.param("config"))]
        if self.service in API_SERVICES:
            return [binary, "serve", API_SERVICES[self.service], "--workers",
                    str(self.agent.param("workers")), "--threads",
                    str(self.agent.param("threads")), *config]
        if self.service == "evacuator":
            return [binary, "evacuator", "run", *config]
        if self.service == "network-agent":
            return [binary, "network-agent", *config]
        return [binary, "compute-agent", *config]

    def health_url(self) -> str:
        cfg = self.load_config()
        listen = str(getattr(cfg, API_SERVICES[self.service]).listen)
        host, _, port = listen.rpartition(":")
        if host in ("0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        return f"{cfg.tls.scheme}://{host}:{port}/healthcheck"

    # ---- actions ---------------------------------------------------------------------------
    def validate(self) -> int:
        binary = self.agent.param("binary") or DEFAULT_BINARY
        if not os.access(binary, os.X_OK):
            raise OcfError(Exit.ERR_INSTALLED, f"{binary} is not installed or not executable")
        for name in ("workers", "threads"):
            if self.service in API_SERVICES:
                value = self.agent.param(name) or ""
                if not value.isdigit() or int(value) < 1:
                    raise OcfError(Exit.ERR_CONFIGURED, f"{name} must be a positive integer")
        self.load_config()
        return Exit.SUCCESS

    def start(self) -> int:
        self.validate()
        proc = self.proc()
        if not proc.alive():
            proc.run_dir.mkdir(parents=True, exist_ok=True)
            proc.log_dir.mkdir(parents=True, exist_ok=True)
            with open(proc.logfile, "ab") as log:
                child = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True, close_fds=True)
            proc.pidfile.write_text(f"{child.pid}\n")
            self.agent.log.info("started %s: pid %d", self.service, child.pid)
        else:
            self.agent.log.info("%s already runs: pid %s", self.service, proc.pid())
        deadline = time.monotonic() + max(5.0, self.timeout_s(60) - 5)
        while time.monotonic() < deadline:
            if not proc.alive():
                raise OcfError(Exit.ERR_GENERIC, f"{self.service} (pid {proc.pid()}) exited "
                                                 f"during start: {tail(proc.logfile)}")
            if self._healthy() is None:
                return Exit.SUCCESS
            time.sleep(0.5)
        raise OcfError(Exit.ERR_GENERIC, f"{self.service} did not become healthy in time: "
                                         f"{self._healthy()}")

    def stop(self) -> int:
        proc = self.proc()
        pid = proc.pid()
        if pid is not None and proc.alive():
            grace = max(2.0, self.timeout_s(30) - 5)
            self._signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and proc.alive():
                time.sleep(0.2)
            if proc.alive():
                self.agent.log.warning("pid %d outlived SIGTERM by %.0f s: SIGKILL", pid, grace)
                self._signal_group(pid, signal.SIGKILL)
                for _ in range(50):
                    if not proc.alive():
                        break
                    time.sleep(0.1)
        if proc.alive():
            raise OcfError(Exit.ERR_GENERIC, f"pid {pid} survived SIGKILL")
        proc.pidfile.unlink(missing_ok=True)
        if pid is not None:
            self.agent.log.info("stopped %s (pid %d)", self.service, pid)
        return Exit.SUCCESS

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(pid, sig)

    def monitor_process(self) -> int:
        proc = self.proc()
        if proc.alive():
            return Exit.SUCCESS
        if proc.pid() is not None and not self.agent.is_probe("monitor"):
            raise OcfError(Exit.ERR_GENERIC, f"{self.service} process {proc.pid()} died")
        return Exit.NOT_RUNNING

    def monitor_service(self) -> int:
        status = self.monitor_process()
        if status != Exit.SUCCESS:
            return status
        problem = self._healthy()
        if problem is not None:
            raise OcfError(Exit.ERR_GENERIC, problem)
        return Exit.SUCCESS

    def _healthy(self) -> str | None:
        """None when the service answers healthy; else what is wrong."""
        if self.service == "evacuator":
            return self._loop_fresh()
        if self.service == "network-agent":
            return self._rounds_fresh()
        if self.service not in API_SERVICES:
            return self._heartbeat_fresh()
        try:
            with urllib.request.urlopen(self.health_url(), timeout=5,
                                        context=self._tls_context()) as resp:
                return None if resp.status == 200 else f"healthcheck answered {resp.status}"
        except urllib.error.HTTPError as exc:
            return f"healthcheck answered {exc.code}: {exc.read()[:300]!r}"
        except (OSError, urllib.error.URLError) as exc:
            return f"healthcheck unreachable: {exc}"

    def _tls_context(self) -> ssl.SSLContext | None:
        """The health check verifies the service's certificate against the cluster CA
        (the node's certificate names 127.0.0.1 for this)."""
        cfg = self.load_config()
        if not cfg.tls.enabled:
            return None
        return ssl.create_default_context(cafile=cfg.tls.ca_file)

    def _loop_fresh(self) -> str | None:
        """The evacuation controller touches a file every iteration: one that has not
        for 30 s is stuck (in a call that never returns), and gets restarted."""
        from ha.evacuator.daemon import heartbeat_path

        try:
            age = time.time() - heartbeat_path(self.load_config()).stat().st_mtime
        except FileNotFoundError:
            return "the controller has not completed an iteration yet"
        try:
            spawned = self.proc().pidfile.stat().st_mtime
        except FileNotFoundError:
            spawned = 0.0
        if time.time() - age < spawned - 1:
            return "the controller has not completed an iteration since it was started"
        return None if age < 30 else f"the controller's last iteration was {age:.0f} s ago"

    def _rounds_fresh(self) -> str | None:
        """The network agent touches a file after each complete round: none since the
        process started means it has not converged this host yet (start waits for
        it); an old one means its rounds fail or hang (the log says which)."""
        from core.network.agent.agent import heartbeat_path

        cfg = self.load_config()
        try:
            age = time.time() - heartbeat_path(cfg.state_path).stat().st_mtime
        except FileNotFoundError:
            return "the network agent has not completed a round yet"
        try:
            spawned = self.proc().pidfile.stat().st_mtime
        except FileNotFoundError:
            spawned = 0.0
        if time.time() - age < spawned - 1:
            return "the network agent has not completed a round since it was started"
        limit = max(30.0, 5 * cfg.network.agent_interval)
        return None if age < limit else f"the network agent's last round was {age:.0f} s ago"

    def _heartbeat_fresh(self) -> str | None:
        from sqlalchemy import select

        from core.common.db import Database
        from core.compute.models import ComputeService

        cfg = self.load_config()
        db = Database(cfg.database_url, pool_size=1, max_retries=0, ssl_ca=cfg.database.ssl_ca)
        try:
            row = db.run_in_transaction(lambda s: s.scalars(select(ComputeService).where(
                ComputeService.host == cfg.compute_host)).first())
        except Exception as exc:  # any database failure is a failed health check
            return f"database unreachable: {exc}"
        finally:
            db.dispose()
        if row is None:
            return f"no compute service row for {cfg.compute_host} yet"
        try:
            spawned = self.proc().pidfile.stat().st_mtime
        except FileNotFoundError:
            spawned = 0.0
        if row.started_at < spawned - 1:
            return "the compute agent has not registered since it was started"
        age = time.time() - row.last_seen
        if age > cfg.compute.service_down_time / 2:
            return f"last heartbeat {age:.0f}s ago"
        return None


def main(service: str, shortdesc: str) -> None:
    HavenServiceAgent(service, shortdesc).agent.run()
