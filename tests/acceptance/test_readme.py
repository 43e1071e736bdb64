"""The newcomer's path: ``make run`` on a fresh copy, then the README's examples verbatim.

A user follows the README: ``make run`` (which sets up a virtual environment and runs the
all-in-one), then types the lines of the README's example block. This test does the same
on a throwaway copy of the checkout (its tracked and new files, as a clone would hold: no
``.venv``, no ``.haven``), with its own ``HOME`` (so the ``haven`` cloud is written to a
``~/.config/openstack/clouds.yaml`` of its own), and runs:

- the ``make run`` line of the README's first code block, with ``bash``, as printed;
- every command of each code block marked ``<!-- readme-examples -->``, with ``bash``, as
  printed, and the command ``make run`` prints to try. A non-zero exit fails the test.
  A trailing comment names text the command's output must show
  (``... console log show vm1   # HAVEN-TINY-BOOTED``); such a command is
  run again, as printed, until its output shows it (a guest takes seconds to boot).

Only what a README reader cannot see is set from outside: ``$HAVEN_CONFIG`` (which the
README documents) moves the four APIs to free loopback ports, so this runs beside a
developer's own ``make run``, and reuses the tiny guest image the other tests build.
``HAVEN_SETUP_AGENTS=no`` keeps the set-up from repointing the machine-wide OCF wrappers
at the copy.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.acceptance.helpers import REPO, TINY_CACHE
from tests.conftest import free_port

README = "README.md"
EXAMPLES_MARK = "<!-- readme-examples -->"
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
# `command   # expected text`: a comment after at least two spaces names expected output
EXPECT = re.compile(r"\s{2,}#\s*(\S.*?)\s*$")
START_TIMEOUT = 1200.0  # a first `make run` builds the virtual environment (pip, gcc)
EXPECT_TIMEOUT = 180.0  # a TCG guest boots in seconds; a loaded machine takes longer


@dataclass(frozen=True)
class Command:
    """One command of the README, as printed (continuation lines included)."""

    text: str
    expect: str | None  # text its output must show, from its trailing comment


def code_blocks(readme: str) -> list[tuple[str, str]]:
    """Every fenced block as (the text just before it, its body)."""
    return [(readme[:m.start()].rstrip().rsplit("\n", 1)[-1], m.group(1))
            for m in FENCE.finditer(readme)]


def commands_of(block: str) -> list[Command]:
    """Split a block into commands: a line ending in a backslash goes on."""
    found: list[Command] = []
    pending: list[str] = []
    for line in block.splitlines():
        if not line.strip() and not pending:
            continue
        pending.append(line)
        if line.endswith("\\"):
            continue
        expect = EXPECT.search(pending[-1])
        found.append(Command("\n".join(pending), expect.group(1) if expect else None))
        pending = []
    assert not pending, f"a block ends inside a command: {pending}"
    return found


def run_command(cmd: Command, cwd: Path, env: dict[str, str],
                timeout: float = EXPECT_TIMEOUT) -> str:
    """Run one README command with bash, as printed; fail on a non-zero exit, or when
    its expected text does not show by ``timeout`` (it is run again until it does)."""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(["bash", "-c", cmd.text], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (
            f"README command failed (exit {done.returncode}):\n{cmd.text}\n"
            f"--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}")
        if cmd.expect is None or cmd.expect in done.stdout:
            return done.stdout
        if time.monotonic() > deadline:
            raise AssertionError(f"README command never showed {cmd.expect!r} within "
                                 f"{timeout:.0f} s:\n{cmd.text}\n--- last output ---\n"
                                 f"{done.stdout}")
        time.sleep(3)


def readme_commands(readme: str) -> tuple[Command, list[Command]]:
    """The README's ``make run`` line, and the commands of its marked example blocks."""
    blocks = code_blocks(readme)
    assert blocks, "the README has no code block"
    run = [c for c in commands_of(blocks[0][1]) if c.text.split("#")[0].split() == [
        "make", "run"]]
    assert len(run) == 1, f"the README's first block has no single `make run`: {blocks[0]}"
    examples = [c for before, body in blocks if before.strip() == EXAMPLES_MARK
                for c in commands_of(body)]
    assert examples, f"no code block of the README is marked {EXAMPLES_MARK}"
    return run[0], examples


# ---- the harness itself: quick, no cloud ------------------------------------------

def test_the_parser_reads_commands_continuations_and_expectations() -> None:
    readme = ("x\n```\nmake run     # set up\nmake test\n```\n\n"
              f"{EXAMPLES_MARK}\n```\necho a \\\n    b\n\necho c   # c\n```\n"
              "```\nnot marked\n```\n")
    run, examples = readme_commands(readme)
    assert run == Command("make run     # set up", "set up")
    assert examples == [Command("echo a \\\n    b", None), Command("echo c   # c", "c")]


def test_a_failing_or_silent_line_fails_the_readme_test(tmp_path: Path) -> None:
    env = dict(os.environ)
    with pytest.raises(AssertionError, match="exit 127"):
        run_command(Command("no-such-command-in-the-readme", None), tmp_path, env)
    with pytest.raises(AssertionError, match="exit 1"):
        run_command(Command("false", None), tmp_path, env)
    with pytest.raises(AssertionError, match="never showed 'BOOTED'"):
        run_command(Command("echo nothing   # BOOTED", "BOOTED"), tmp_path, env, timeout=0)
    assert run_command(Command("echo BOOTED   # BOOTED", "BOOTED"), tmp_path, env) == (
        "BOOTED\n")


# ---- the real thing ------------------------------------------------------------------

def fresh_copy(dest: Path) -> None:
    """The checkout's files as a clone of it would hold them (tracked and new files,
    nothing ignored: no virtual environment, no state)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = REPO / name
        if not src.is_file():  # deleted in the work tree
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / name)


def user_env(home: Path, config: Path) -> dict[str, str]:
    """A login's environment: no OpenStack or Haven variables, no active venv, no make
    of ours; pip keeps this machine's configuration and cache."""
    real_home = Path.home()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OS_", "HAVEN_", "MAKE", "MFLAGS", "VIRTUAL_ENV",
                                "PYTEST_"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(REPO)))
    env["HOME"] = str(home)
    env.pop("XDG_CONFIG_HOME", None)
    if (real_home / ".config" / "pip" / "pip.conf").is_file():
        env.setdefault("PIP_CONFIG_FILE", str(real_home / ".config" / "pip" / "pip.conf"))
    env.setdefault("PIP_CACHE_DIR", str(real_home / ".cache" / "pip"))
    env["HAVEN_CONFIG"] = str(config)
    env["HAVEN_SETUP_AGENTS"] = "no"
    return env


class MakeRun:
    """The README's ``make run`` line, running in a session of its own (as in a terminal:
    Ctrl-C reaches make and Haven alike)."""

    def __init__(self, command: Command, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(["bash", "-c", command.text], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if "Ctrl-C stops" in line:
                self.ready.set()
        self.ready.set()  # ended: whoever waits looks at the exit

    def output(self) -> str:
        return "".join(self.lines)

    def interrupt(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout=120)


@pytest.fixture
def sandbox() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("make run's set-up installs Debian packages: it runs as root")
    # Not under pytest's 0700 temporary tree: QEMU (libvirt-qemu) passes through every
    # directory above the state directory.
    base = Path(tempfile.mkdtemp(prefix="haven-readme-", dir="/var/tmp"))
    base.chmod(0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_make_run_then_the_readme_examples_as_printed(sandbox: Path) -> None:
    copy, home = sandbox / "haven", sandbox / "home"
    copy.mkdir()
    home.mkdir(mode=0o700)
    fresh_copy(copy)
    run, examples = readme_commands((copy / README).read_text())
    config = sandbox / "haven.yaml"
    config.write_text(yaml.safe_dump({
        **{s: {"listen": f"127.0.0.1:{free_port()}"}
           for s in ("identity", "image")},
        # no veth or address on the machine's own network (see test_allinone_net.py)
        "network": {"listen": f"127.0.0.1:{free_port()}", "allinone_networking": False},
        "compute": {"listen": f"127.0.0.1:{free_port()}", "shutdown_timeout": 10,
                    "demo_image_dir": str(TINY_CACHE)}}))
    env = user_env(home, config)

    haven = MakeRun(run, copy, env)
    try:
        assert haven.ready.wait(START_TIMEOUT), "make run not ready:\n" + haven.output()
        assert haven.proc.poll() is None, "make run ended:\n" + haven.output()
        for cmd in examples:
            run_command(cmd, copy, env)
        # what make run itself prints to try works as printed too
        [hint] = re.findall(r"try: (.*?)\s+\(Ctrl-C stops\)", haven.output())
        assert hint.startswith(".venv/bin/openstack "), hint
        run_command(Command(hint, None), copy, env)
    finally:
        try:  # guests outlive Haven (they are pets): delete what the examples made
            cleanup = Command(".venv/bin/openstack --os-cloud haven server list -f value "
                              "-c ID | xargs -r .venv/bin/openstack --os-cloud haven "
                              "server delete --wait", None)
            if haven.proc.poll() is None:
                run_command(cleanup, copy, env)
        finally:
            haven.interrupt()
    out = haven.output()
    assert "Haven stopped." in out, out
    assert "Traceback" not in out, out
