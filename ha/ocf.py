"""Haven's OCF resource-agent helper ("ocfpy"): what every Haven agent stands on.

Shaped like ClusterLabs' ``ocf.py`` (``Agent``, ``add_parameter``,
``add_action``, ``run``, exit codes, ``is_probe``, exit reasons) so agent
authors feel at home, with two deliberate differences:

* Required parameters are never checked before ``stop`` (nor before a probe,
  nor ``meta-data``): a stop that fails because of a configuration mistake gets
  the node fenced, while the resource cannot be running anyway. A bad
  configuration makes ``validate-all``/``start`` fail with ERR_CONFIGURED and an
  exit reason; ``stop`` succeeds and ``monitor`` reports not running.
* Meta-data is built with ElementTree, so descriptions with ``<`` or ``&`` stay
  valid XML.

Monitor depth: ``OCF_CHECK_LEVEL`` selects the depth; an agent registers one
handler per depth it supports (``add_monitor(depth, handler)``), and the
deepest registered depth not above the requested one runs.

Logging (``Agent.log``) follows ``ocf_log`` of resource-agents' shell functions:
syslog with the facility in ``HA_LOGFACILITY`` (empty or ``none``: no syslog),
debug messages only when ``HA_debug=1``, ``HA_LOGFILE``/``HA_DEBUGLOG`` when
set, stderr when it is a terminal; every line tagged
``agent(resource-instance)[pid]``. An action that raises anything but
:class:`OcfError` ends with OCF_ERR_GENERIC and an exit reason naming the
error; the traceback goes to the debug log, never bare to Pacemaker.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TextIO
from xml.etree import ElementTree as ET


class Exit(IntEnum):
    SUCCESS = 0
    ERR_GENERIC = 1
    ERR_ARGS = 2
    ERR_UNIMPLEMENTED = 3
    ERR_PERM = 4
    ERR_INSTALLED = 5
    ERR_CONFIGURED = 6
    NOT_RUNNING = 7
    RUNNING_PROMOTED = 8
    FAILED_PROMOTED = 9
    DEGRADED = 190
    DEGRADED_PROMOTED = 191


class OcfError(Exception):
    """Ends the action with ``code`` and, when given, an exit reason for the cluster."""

    def __init__(self, code: Exit, reason: str = "") -> None:
        super().__init__(reason or code.name)
        self.code = code
        self.reason = reason


def exit_reason(reason: str, stream: TextIO | None = None) -> None:
    """Tell Pacemaker why (it shows this in ``crm_mon`` and ``pcs status``): one line."""
    line = " ".join(reason.split())
    print(f"ocf-exit-reason:{line}", file=stream or sys.stderr, flush=True)


SYSLOG_SOCKET = "/dev/log"


def agent_logger(name: str, env: dict[str, str], syslog_address: str = SYSLOG_SOCKET,
                 stderr: TextIO | None = None) -> logging.Logger:
    """A logger set up as ``ocf_log`` would be from the environment Pacemaker passes.

    * ``HA_LOGFACILITY``: syslog facility (daemon, local0, ...); empty or ``none``
      means no syslog. An unknown name falls back to daemon (the HA default); a
      missing syslog socket means no syslog rather than a failed action.
    * ``HA_debug=1``: debug messages are written; otherwise they are dropped.
    * ``HA_LOGFILE``: every message also to this file; ``HA_DEBUGLOG``: debug
      messages (with HA_debug=1) to this one.
    * A terminal on stderr (an operator running the agent by hand) gets them too.

    Every line carries ``name(OCF_RESOURCE_INSTANCE)[pid]: LEVEL:``.
    """
    instance = env.get("OCF_RESOURCE_INSTANCE", "default")
    logger = logging.getLogger(f"haven.ocf.{name}.{instance}")
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.propagate = False
    debug = env.get("HA_debug", "0") == "1"
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    tag = f"{name}({instance})[{os.getpid()}]"
    facility = env.get("HA_LOGFACILITY", "").strip().lower()
    if facility and facility != "none":
        code = logging.handlers.SysLogHandler.facility_names.get(
            facility, logging.handlers.SysLogHandler.LOG_DAEMON)
        try:
            syslog = logging.handlers.SysLogHandler(address=syslog_address, facility=code)
        except OSError:
            pass  # no syslog daemon here: the other destinations still get the message
        else:
            syslog.setFormatter(logging.Formatter(f"{tag}: %(levelname)s: %(message)s"))
            logger.addHandler(syslog)
    stamped = logging.Formatter(f"%(asctime)s {tag}: %(levelname)s: %(message)s")
    files = [env.get("HA_LOGFILE", "")]
    if debug and env.get("HA_DEBUGLOG", "") not in files:
        files.append(env.get("HA_DEBUGLOG", ""))
    for path in filter(None, files):
        try:
            handler = logging.FileHandler(path)
        except OSError:
            continue  # an unwritable log file must not fail the action
        handler.setFormatter(stamped)
        logger.addHandler(handler)
    stream = stderr or sys.stderr
    if stream.isatty():
        console = logging.StreamHandler(stream)
        console.setFormatter(logging.Formatter(f"{tag}: %(levelname)s: %(message)s"))
        logger.addHandler(console)
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


@dataclass
class Parameter:
    name: str
    shortdesc: str
    longdesc: str = ""
    content_type: str = "string"
    default: str | None = None
    required: bool = False
    unique: bool = False

    def value(self, env: dict[str, str]) -> str | None:
        return env.get(f"OCF_RESKEY_{self.name}", self.default)


@dataclass
class Action:
    name: str
    handler: Callable[[], int] | None
    timeout: int = 20
    interval: int | None = None
    depth: int | None = None
    role: str | None = None


@dataclass
class Agent:
    """One resource agent: parameters, actions, and the dispatch of ``run``."""

    name: str
    shortdesc: str
    longdesc: str = ""
    version: str = "1.0"
    parameters: list[Parameter] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    monitors: dict[int, Callable[[], int]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    syslog_address: str = SYSLOG_SOCKET
    _log: logging.Logger | None = field(default=None, init=False, repr=False)

    def add_parameter(self, name: str, shortdesc: str, longdesc: str = "",
                      content_type: str = "string", default: str | None = None,
                      required: bool = False, unique: bool = False) -> None:
        self.parameters.append(Parameter(name, shortdesc, longdesc, content_type, default,
                                         required, unique))

    def add_action(self, name: str, handler: Callable[[], int] | None, timeout: int = 20,
                   interval: int | None = None, depth: int | None = None,
                   role: str | None = None) -> None:
        self.actions.append(Action(name, handler, timeout, interval, depth, role))

    def add_monitor(self, depth: int, handler: Callable[[], int], timeout: int = 20,
                    interval: int = 10) -> None:
        """A monitor at ``depth`` (0: process; 10: the service answers; ...)."""
        self.monitors[depth] = handler
        self.actions.append(Action("monitor", None, timeout, interval, depth))

    # ---- environment -----------------------------------------------------------------
    @property
    def log(self) -> logging.Logger:
        """The agent's logger (:func:`agent_logger`), set up on first use."""
        if self._log is None:
            try:
                self._log = agent_logger(self.name, self.env, self.syslog_address)
            except Exception:  # logging must never be why an action fails
                self._log = logging.getLogger(f"haven.ocf.{self.name}.unconfigured")
                self._log.addHandler(logging.NullHandler())
                self._log.propagate = False
        return self._log

    def param(self, name: str) -> str | None:
        for p in self.parameters:
            if p.name == name:
                return p.value(self.env)
        raise KeyError(f"agent {self.name} has no parameter {name}")

    @property
    def instance(self) -> str:
        return self.env.get("OCF_RESOURCE_INSTANCE", self.name)

    @property
    def check_level(self) -> int:
        try:
            return int(self.env.get("OCF_CHECK_LEVEL", "0"))
        except ValueError:
            return 0

    def is_probe(self, action: str) -> bool:
        """A one-off monitor Pacemaker runs to learn the state (interval 0)."""
        return action == "monitor" and self.env.get("OCF_RESKEY_CRM_meta_interval", "0") == "0"

    def missing_required(self) -> list[str]:
        return [p.name for p in self.parameters if p.required and not p.value(self.env)]

    # ---- meta-data ---------------------------------------------------------------------
    def metadata(self) -> str:
        root = ET.Element("resource-agent", name=self.name, version=self.version)
        ET.SubElement(root, "version").text = "1.1"
        ET.SubElement(root, "longdesc", lang="en").text = self.longdesc or self.shortdesc
        ET.SubElement(root, "shortdesc", lang="en").text = self.shortdesc
        params = ET.SubElement(root, "parameters")
        for p in self.parameters:
            el = ET.SubElement(params, "parameter", name=p.name, unique=str(int(p.unique)),
                               required=str(int(p.required)))
            ET.SubElement(el, "longdesc", lang="en").text = p.longdesc or p.shortdesc
            ET.SubElement(el, "shortdesc", lang="en").text = p.shortdesc
            content = ET.SubElement(el, "content", type=p.content_type)
            if p.default is not None:
                content.set("default", p.default)
        actions = ET.SubElement(root, "actions")
        for a in self.actions:
            el = ET.SubElement(actions, "action", name=a.name, timeout=f"{a.timeout}s")
            if a.interval is not None:
                el.set("interval", f"{a.interval}s")
            if a.depth is not None:
                el.set("depth", str(a.depth))
            if a.role is not None:
                el.set("role", a.role)
        ET.indent(root)
        return '<?xml version="1.0"?>\n<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">\n' + (
            ET.tostring(root, encoding="unicode")) + "\n"

    # ---- dispatch ----------------------------------------------------------------------
    def _handler(self, action: str) -> Callable[[], int] | None:
        if action == "monitor" and self.monitors:
            depths = sorted(d for d in self.monitors if d <= self.check_level)
            return self.monitors[depths[-1] if depths else min(self.monitors)]
        for a in self.actions:
            if a.name == action and a.handler is not None:
                return a.handler
        return None

    def dispatch(self, action: str) -> int:
        """Run ``action`` and return its exit code (``run`` wraps this for argv).

        Whatever the action raises ends as an exit code with a reason: OcfError
        as it says, anything else as ERR_GENERIC naming the error (the traceback
        to the debug log), so Pacemaker never reads a bare traceback.
        """
        try:
            return self._dispatch(action)
        except Exception as exc:
            what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self.log.error("%s failed unexpectedly: %s", action, what)
            self.log.debug("traceback of the failed %s", action, exc_info=True)
            exit_reason(f"{action} failed unexpectedly: {what}"[:250])
            return Exit.ERR_GENERIC

    def _dispatch(self, action: str) -> int:
        if action == "meta-data":
            sys.stdout.write(self.metadata())
            return Exit.SUCCESS
        handler = self._handler(action)
        if handler is None:
            exit_reason(f"action {action} is not implemented by {self.name}")
            return Exit.ERR_UNIMPLEMENTED
        missing = self.missing_required()
        if missing and action not in ("stop",) and not self.is_probe(action):
            exit_reason(f"required parameter(s) missing: {', '.join(missing)}")
            return Exit.ERR_CONFIGURED
        if missing and self.is_probe(action):
            return Exit.NOT_RUNNING  # misconfigured: certainly not running here
        self.log.debug("%s (check level %d)", action, self.check_level)
        try:
            return int(handler())
        except OcfError as err:
            if err.reason:
                level = logging.INFO if err.code == Exit.NOT_RUNNING else logging.ERROR
                self.log.log(level, "%s: %s", action, err.reason)
                exit_reason(err.reason)
            return int(err.code)

    def usage(self) -> str:
        names = sorted({a.name for a in self.actions} | {"meta-data"})
        return f"usage: {self.name} {{{'|'.join(names)}}}"

    def run(self, argv: list[str] | None = None) -> None:
        args = sys.argv[1:] if argv is None else argv
        if len(args) != 1:
            print(self.usage(), file=sys.stderr)
            raise SystemExit(Exit.ERR_ARGS)
        if args[0] in ("usage", "help", "--help", "-h"):
            print(self.usage())
            raise SystemExit(Exit.SUCCESS)
        raise SystemExit(self.dispatch(args[0]))
