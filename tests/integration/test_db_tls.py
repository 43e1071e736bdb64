"""Haven's connections to MariaDB over TLS, verified with the cluster CA (issue 9).

A real mariadbd with the [mysqld] TLS settings node-config writes
(nodeconf.mariadb_tls_conf: a certificate of the cluster CA, TCP clients must use
TLS); Haven's Database with ``ssl_ca`` connects over TCP and checks the server.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymysql
import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from core.common.db import Database
from ha.bootstrap import nodeconf
from ha.bootstrap.tls import new_ca
from tests.rabbitmq import free_port

pytestmark = pytest.mark.mariadb
PASSWORD = "tls-test-password"


@dataclass
class TlsMariaDB:
    port: int
    ca: Path
    socket: Path

    def set_global(self, setting: str) -> None:
        conn = pymysql.connect(unix_socket=str(self.socket), user="root")
        with conn.cursor() as cur:
            cur.execute(f"SET GLOBAL {setting}")
        conn.close()

    def url(self, host: str = "127.0.0.1") -> str:
        return f"mysql+pymysql://haven:{PASSWORD}@{host}:{self.port}/mysql?charset=utf8mb4"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsMariaDB]:
    base = tmp_path_factory.mktemp("mariadb-tls")
    tls = base / "tls"
    tls.mkdir()
    ca = new_ca("test")
    key, cert = ca.issue("db", ["127.0.0.1"])  # not localhost: see the name test
    (tls / "ca.crt").write_bytes(ca.cert_pem)
    (tls / "node.crt").write_bytes(cert)
    (tls / "node.key").write_bytes(key)
    mariadbd = shutil.which("mariadbd", path="/usr/sbin:/usr/bin")
    install_db = shutil.which("mariadb-install-db")
    if not mariadbd or not install_db:
        pytest.fail("MariaDB is not installed: run appliance/setup.sh test")
    datadir, sock, port = base / "data", base / "mysqld.sock", free_port()
    cnf = base / "my.cnf"
    cnf.write_text(f"[mysqld]\ndatadir = {datadir}\nsocket = {sock}\nport = {port}\n"
                   f"bind-address = 127.0.0.1\nuser = root\nlog-error = {base / 'err.log'}\n"
                   f"pid-file = {base / 'mysqld.pid'}\ninnodb-buffer-pool-size = 32M\n"
                   + nodeconf.mariadb_tls_conf(str(tls)))
    subprocess.run([install_db, "--no-defaults", f"--datadir={datadir}", "--user=root",
                    "--auth-root-authentication-method=normal", "--skip-test-db"],
                   check=True, capture_output=True)
    proc = subprocess.Popen([mariadbd, f"--defaults-file={cnf}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = pymysql.connect(unix_socket=str(sock), user="root")
                break
            except pymysql.err.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail((base / "err.log").read_text()[-2000:])
                time.sleep(0.2)
        with conn.cursor() as cur:
            cur.execute(f"CREATE USER 'haven'@'%' IDENTIFIED BY '{PASSWORD}'")
            cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'haven'@'%'")
        conn.close()
        yield TlsMariaDB(port, tls / "ca.crt", sock)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def session_tls(db: Database) -> tuple[str, str]:
    """The session's TLS version and cipher, as the server sees them ('' when plain)."""
    with db.engine.connect() as conn:
        rows = dict(conn.exec_driver_sql(
            "SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')").all())
    return str(rows["Ssl_version"]), str(rows["Ssl_cipher"])


def test_haven_connects_over_tls_verified_with_the_cluster_ca(server: TlsMariaDB) -> None:
    db = Database(server.url(), pool_size=1, max_retries=0, ssl_ca=str(server.ca))
    try:
        version, cipher = session_tls(db)
        assert version in ("TLSv1.2", "TLSv1.3"), version  # an encrypted session
        assert cipher != "", cipher
    finally:
        db.dispose()


def test_a_plain_text_client_is_refused_by_the_server(server: TlsMariaDB) -> None:
    """PyMySQL alone would try TLS opportunistically (unverified); a client that
    does not use TLS at all is refused by the server's require_secure_transport."""
    engine = create_engine(server.url(), connect_args={"ssl_disabled": True})
    with pytest.raises(OperationalError, match=r"Access denied|secure transport"):
        engine.connect().close()
    # the same client and password get in once TLS is not required: it was TLS
    server.set_global("require_secure_transport = OFF")
    try:
        engine.connect().close()
    finally:
        server.set_global("require_secure_transport = ON")
    engine.dispose()


def test_a_server_the_ca_did_not_sign_or_another_name_is_refused(server: TlsMariaDB,
                                                                 tmp_path: Path) -> None:
    stranger = tmp_path / "other.crt"
    stranger.write_bytes(new_ca("other").cert_pem)
    with pytest.raises(OperationalError, match="CERTIFICATE_VERIFY_FAILED"):
        Database(server.url(), pool_size=1, max_retries=0, ssl_ca=str(stranger)).ping()
    with pytest.raises(OperationalError, match=r"CERTIFICATE_VERIFY_FAILED|match"):
        Database(server.url("localhost"), pool_size=1, max_retries=0,
                 ssl_ca=str(server.ca)).ping()
