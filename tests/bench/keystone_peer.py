"""Run a real OpenStack Keystone (from PyPI) as the side-by-side peer of the identity benchmark.

Haven's identity service is measured against the reference implementation it mimics, so the
peer must run the way a production Keystone does, not as a dev toy:

* Keystone 30.0.0 and gunicorn 27.0.1 live in their own venv built from Debian's
  ``/usr/bin/python3``, with every transitive dependency pinned by ``keystone-constraints.txt``
  (a ``pip freeze`` of a working install), so the numbers don't drift with PyPI releases.
* Fernet tokens, bcrypt password hashing at Keystone's default cost (checked: cost 12), the
  oslo.cache in-memory cache switched on, an SQLite database, ``keystone-manage bootstrap``.
* Served by gunicorn (gthread workers) running Keystone's WSGI application
  ``keystone.wsgi.api:application``.

Run this file directly for an end-to-end smoke test (issue and validate one token).
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import hashlib
import json
import os
import pwd
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

KEYSTONE_VERSION = "30.0.0"
GUNICORN_VERSION = "27.0.1"
REQUIREMENTS = (f"keystone=={KEYSTONE_VERSION}", f"gunicorn=={GUNICORN_VERSION}")
SYSTEM_PYTHON = Path("/usr/bin/python3")
CONSTRAINTS_FILE = Path(__file__).with_name("keystone-constraints.txt")

# Keystone 30's WSGI module; keystone-wsgi-public no longer exists as a script.
WSGI_APP = "keystone.wsgi.api:application"

# Keystone 30 defaults: [identity] password_hash_algorithm = bcrypt and, with
# password_hash_rounds unset, keystone.common.password_hashers.bcrypt uses rounds=12.
EXPECTED_HASH_PREFIX = "$2b$12$"
EXPECTED_HASH_SCHEME = "bcrypt cost 12"

READY_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0
# Written by the gunicorn post_worker_init hook once a worker has imported Keystone.
WORKER_READY_MARK = "haven-bench: worker loaded the WSGI app"

# Inherited variables that would change what the venv's Python or keystone-manage do.
_SCRUBBED_ENV_PREFIXES = ("PYTHON", "OS_")
_SCRUBBED_ENV_NAMES = ("VIRTUAL_ENV", "GUNICORN_CMD_ARGS")


@dataclass
class KeystonePeer:
    """A running Keystone; ``url + "/v3"`` is its identity API root."""

    url: str
    admin_user: str
    admin_password: str
    admin_project: str
    workdir: Path | None = None
    password_hash_scheme: str = EXPECTED_HASH_SCHEME
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _output: IO[bytes] | None = field(default=None, repr=False)

    def stop(self) -> None:
        """Stop gunicorn and its workers: TERM the process group, KILL it after 10 s.

        The whole group is signalled (gunicorn was started in its own session) so that no
        worker survives a master that died or hangs.
        """
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    _signal_group(proc.pid, signal.SIGKILL)
                    proc.wait()
            # Workers may outlive a master that exited on its own: make sure they are gone.
            _signal_group(proc.pid, signal.SIGKILL)
            self._proc = None
        if self._output is not None:
            self._output.close()
            self._output = None

    def __enter__(self) -> KeystonePeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ensure_keystone_venv(cache_dir: Path) -> Path:
    """Create (once) ``cache_dir/'keystone-venv'`` with the pinned Keystone and gunicorn.

    A stamp file records the requirements, the constraints' hash and the base interpreter, so a
    second call is a stat and a read; any change of those rebuilds the venv from scratch. An
    flock serialises concurrent callers (two benchmark processes sharing the cache).
    """
    cache_dir = cache_dir.resolve()  # callers run the venv's tools from other directories
    cache_dir.mkdir(parents=True, exist_ok=True)
    venv = cache_dir / "keystone-venv"
    stamp = venv / ".haven-bench-stamp"
    wanted = _venv_fingerprint()
    with open(cache_dir / "keystone-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / "bin" / "gunicorn").exists() and _read_text(stamp) == wanted:
            return venv
        log_path = cache_dir / "keystone-venv-install.log"
        with open(log_path, "wb") as log:
            _run([str(SYSTEM_PYTHON), "-m", "venv", "--clear", str(venv)], log, log_path)
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install"]
            pip += ["--disable-pip-version-check", "--progress-bar", "off"]
            pip += ["-c", str(CONSTRAINTS_FILE), *REQUIREMENTS]
            _run(pip, log, log_path)
        stamp.write_text(wanted)
    return venv


def start_keystone(
    workdir: Path, cache_dir: Path, port: int, workers: int = 2, threads: int = 4
) -> KeystonePeer:
    """Configure, bootstrap and serve Keystone on 127.0.0.1:port; return once it answers.

    Everything (config, SQLite DB, Fernet and credential keys, logs) goes under ``workdir``.
    Returns only after GET /v3 answers 200 *and* every gunicorn worker has loaded Keystone,
    so the benchmark's first requests don't pay for a worker still importing.
    """
    venv = ensure_keystone_venv(cache_dir)
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    password = "haven-bench-" + hashlib.sha256(os.urandom(32)).hexdigest()[:24]

    conf = workdir / "keystone.conf"
    conf.write_text(keystone_conf(workdir))
    env = _clean_env()
    env["OS_KEYSTONE_CONFIG_FILES"] = str(conf)

    manage_log_path = workdir / "keystone-manage.log"
    manage = [str(venv / "bin" / "keystone-manage"), "--config-file", str(conf)]
    with open(manage_log_path, "wb") as log:
        # The key commands insist on an owner; the peer runs as whoever runs the benchmark.
        owner = ["--keystone-user", pwd.getpwuid(os.getuid()).pw_name]
        owner += ["--keystone-group", grp.getgrgid(os.getgid()).gr_name]
        for command in (["db_sync"], ["fernet_setup", *owner], ["credential_setup", *owner]):
            _run(manage + command, log, manage_log_path, env=env)
        bootstrap_env = dict(env, OS_BOOTSTRAP_PASSWORD=password)
        bootstrap = ["bootstrap", "--bootstrap-username", "admin"]
        bootstrap += ["--bootstrap-project-name", "admin", "--bootstrap-role-name", "admin"]
        bootstrap += ["--bootstrap-region-id", "RegionOne"]
        for interface in ("admin", "internal", "public"):
            bootstrap += [f"--bootstrap-{interface}-url", f"{url}/v3"]
        _run(manage + bootstrap, log, manage_log_path, env=bootstrap_env)
    _check_password_hash(workdir / "keystone.db", "admin")

    gunicorn_log = workdir / "gunicorn.log"
    gunicorn_log.unlink(missing_ok=True)  # the readiness check counts marks in this file
    (workdir / "gunicorn.conf.py").write_text(gunicorn_conf(workdir, conf, port, workers, threads))
    output = open(workdir / "gunicorn.out", "ab")  # noqa: SIM115 - owned by the peer
    # No arguments on purpose: Keystone parses sys.argv with oslo.config and would reject
    # gunicorn's own options, so gunicorn reads everything from ./gunicorn.conf.py (its default).
    try:
        proc = subprocess.Popen(
            [str(venv / "bin" / "gunicorn")],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except BaseException:
        output.close()
        raise
    peer = KeystonePeer(url, "admin", password, "admin", workdir, EXPECTED_HASH_SCHEME)
    peer._proc, peer._output = proc, output
    try:
        _wait_ready(peer, proc, workers, gunicorn_log)
    except BaseException:
        peer.stop()
        raise
    return peer


def keystone_conf(workdir: Path) -> str:
    """keystone.conf for the peer; anything not set here is left at Keystone's default.

    Notably untouched: [identity] password_hash_algorithm / password_hash_rounds (bcrypt, 12),
    [token] caching (on), debug (off). The Fernet receipt keys share the token key directory,
    as they do by default (/etc/keystone/fernet-keys/).
    """
    return f"""\
[DEFAULT]
log_dir = {workdir}
log_file = keystone.log

[database]
connection = sqlite:///{workdir}/keystone.db

[token]
provider = fernet

[fernet_tokens]
key_repository = {workdir}/fernet-keys/

[fernet_receipts]
key_repository = {workdir}/fernet-keys/

[credential]
key_repository = {workdir}/credential-keys/

[cache]
enabled = true
backend = dogpile.cache.memory
"""


def gunicorn_conf(
    workdir: Path, keystone_conf_path: Path, port: int, workers: int, threads: int
) -> str:
    """gunicorn.conf.py: self-contained, so ``cd workdir && gunicorn`` reproduces the peer."""
    settings: dict[str, Any] = {
        "wsgi_app": WSGI_APP,
        "bind": [f"127.0.0.1:{port}"],
        "worker_class": "gthread",
        "workers": workers,
        "threads": threads,
        "timeout": 120,
        "graceful_timeout": 5,
        "raw_env": [f"OS_KEYSTONE_CONFIG_FILES={keystone_conf_path}"],
        # No per-request access log: Haven's server writes none either, so the two servers
        # are configured alike (Keystone's own log still records what it does).
        "accesslog": None,
        "errorlog": str(workdir / "gunicorn.log"),
        "loglevel": "info",
        "pidfile": str(workdir / "gunicorn.pid"),
        "proc_name": "keystone-peer",
        # gunicorn 27 otherwise opens a control socket at a per-user path ($HOME/.gunicorn/
        # gunicorn.ctl) that Haven's own gunicorn or a second peer would fight over.
        "control_socket_disable": True,
    }
    lines = [f"{name} = {value!r}" for name, value in settings.items()]
    lines += [
        "",
        "",
        "def post_worker_init(worker):",
        f"    worker.log.info({WORKER_READY_MARK + ' (pid %s)'!r}, worker.pid)",
    ]
    return "\n".join(lines) + "\n"


def _wait_ready(
    peer: KeystonePeer, proc: subprocess.Popen[bytes], workers: int, gunicorn_log: Path
) -> None:
    """Poll until /v3 answers 200 and all workers reported in; raise with the logs if not."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last_error = "no attempt yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"gunicorn exited with {proc.returncode} during startup\n"
                + _log_tails(peer.workdir)
            )
        try:
            with urllib.request.urlopen(peer.url + "/v3", timeout=5) as response:
                status = response.status
        except (OSError, urllib.error.URLError) as exc:
            last_error = repr(exc)
        else:
            loaded = _read_text(gunicorn_log).count(WORKER_READY_MARK)
            if status == 200 and loaded >= workers:
                return
            last_error = f"GET /v3 -> {status}, {loaded}/{workers} workers loaded"
        time.sleep(0.25)
    raise RuntimeError(
        f"Keystone not ready after {READY_TIMEOUT_S:.0f} s ({last_error})\n"
        + _log_tails(peer.workdir)
    )


def _check_password_hash(db: Path, user: str) -> None:
    """Fail unless the bootstrapped password is stored as bcrypt cost 12 (Keystone's default).

    The benchmark compares password-auth cost, so a peer silently hashing differently (another
    default in a future release, a stray config) would make the comparison meaningless.
    """
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute(
            "SELECT p.password_hash FROM password p"
            " JOIN local_user u ON p.local_user_id = u.id WHERE u.name = ?"
            " ORDER BY p.id DESC LIMIT 1",
            (user,),
        ).fetchone()
    stored = row[0] if row else None
    if not stored or not stored.startswith(EXPECTED_HASH_PREFIX):
        shown = stored[:7] if stored else stored
        raise RuntimeError(
            f"expected {user}'s password as {EXPECTED_HASH_SCHEME} ({EXPECTED_HASH_PREFIX}...),"
            f" found {shown!r}"
        )


def _venv_fingerprint() -> str:
    return json.dumps(
        {
            "requirements": REQUIREMENTS,
            "constraints_sha256": hashlib.sha256(CONSTRAINTS_FILE.read_bytes()).hexdigest(),
            "python": str(SYSTEM_PYTHON.resolve()),
        },
        sort_keys=True,
    )


def _run(cmd: list[str], log: IO[bytes], log_path: Path, env: dict[str, str] | None = None) -> None:
    """Run a setup command with its output appended to ``log``; raise with the tail on error."""
    log.write(f"$ {' '.join(cmd)}\n".encode())
    log.flush()
    result = subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env if env is not None else _clean_env(),
        check=False,
    )
    if result.returncode != 0:
        log.flush()
        raise RuntimeError(
            f"{cmd[0]} {' '.join(cmd[1:2])}... exited with {result.returncode}\n" + _tail(log_path)
        )


def _clean_env() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_SCRUBBED_ENV_PREFIXES) and name not in _SCRUBBED_ENV_NAMES
    }


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _tail(path: Path, lines: int = 40) -> str:
    text = _read_text(path).splitlines()[-lines:]
    return f"--- {path} (last {len(text)} lines) ---\n" + "\n".join(text)


def _log_tails(workdir: Path | None) -> str:
    if workdir is None:
        return ""
    names = ("gunicorn.log", "gunicorn.out", "keystone.log")
    return "\n".join(_tail(workdir / name) for name in names)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _request(
    method: str, url: str, headers: dict[str, str], body: dict[str, Any] | None = None
) -> tuple[float, int, dict[str, str], bytes]:
    """One plain-urllib request; returns (seconds, status, headers, body)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = response.read()
        return time.perf_counter() - start, response.status, dict(response.headers), payload


def _smoke(cache_dir: Path) -> None:
    """Start a peer, issue and validate a project-scoped password token, time both, stop."""
    t0 = time.perf_counter()
    venv = ensure_keystone_venv(cache_dir)
    print(f"venv ready in {time.perf_counter() - t0:.1f} s: {venv}")
    with tempfile.TemporaryDirectory(prefix="keystone-peer-") as tmp:
        t0 = time.perf_counter()
        peer = start_keystone(Path(tmp), cache_dir, _free_port())
        with peer:
            print(
                f"started in {time.perf_counter() - t0:.1f} s: {peer.url} "
                f"(passwords: {peer.password_hash_scheme})"
            )
            v3 = peer.url + "/v3"
            auth = {
                "auth": {
                    "identity": {
                        "methods": ["password"],
                        "password": {
                            "user": {
                                "name": peer.admin_user,
                                "domain": {"id": "default"},
                                "password": peer.admin_password,
                            }
                        },
                    },
                    "scope": {"project": {"name": peer.admin_project, "domain": {"id": "default"}}},
                }
            }
            for round_ in range(1, 4):
                took, status, headers, _ = _request("POST", v3 + "/auth/tokens", {}, auth)
                token = headers["X-Subject-Token"]
                ms = took * 1e3
                print(f"[{round_}] issue    POST /v3/auth/tokens -> {status} in {ms:.1f} ms")
                check = {"X-Auth-Token": token, "X-Subject-Token": token}
                took, status, _, body = _request("GET", v3 + "/auth/tokens", check)
                scope = json.loads(body)["token"]["project"]["name"]
                print(
                    f"[{round_}] validate GET  /v3/auth/tokens -> {status} in {took * 1e3:.1f} ms"
                    f" (project {scope})"
                )
            t0 = time.perf_counter()
        print(f"stopped in {time.perf_counter() - t0:.1f} s")
        _report_log_problems(Path(tmp))


def _report_log_problems(workdir: Path) -> None:
    """Print the distinct WARNING/ERROR lines of the peer's logs (a config smell shows here)."""
    for name in ("keystone-manage.log", "keystone.log", "gunicorn.out", "gunicorn.log"):
        seen: dict[str, int] = {}
        for line in _read_text(workdir / name).splitlines():
            if any(level in line for level in ("WARNING", "ERROR", "CRITICAL", "Traceback")):
                # Drop timestamp, pid and request context so repeats collapse into one entry.
                key = re.sub(r"^\S+ \S+ \d+ |\[[^\]]*\] ", "", line)
                seen[key] = seen.get(key, 0) + 1
        print(f"{name}: {sum(seen.values())} warning/error lines")
        for line, count in seen.items():
            print(f"  {count}x {line[:300]}")


if __name__ == "__main__":
    _smoke(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/work/main/.haven-bench"))
