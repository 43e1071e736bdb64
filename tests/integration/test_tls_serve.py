"""Haven's APIs over https with the cluster CA, the way a cluster node serves them.

Real processes: ``haven bootstrap`` on SQLite, then ``haven serve identity`` and
``haven serve image`` under gunicorn with the TLS settings node-config writes
(a certificate from a cluster CA made by ha.bootstrap.tls). Checked: the catalog
lists https endpoints, a plain-http request to an API port gets no answer, a
client that does not trust the cluster CA is refused, and the services' own
client (ServiceClients, used by the compute agent and the evacuator) verifies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from core.common.clients import ServiceCallError, ServiceClients
from core.common.config import HavenConfig, load_config
from ha.bootstrap.tls import new_ca
from tests.conftest import ADMIN_PASSWORD
from tests.rabbitmq import free_port

HAVEN = str(Path(sys.executable).parent / "haven")


@dataclass
class TlsCloud:
    cfg: HavenConfig
    ca: Path
    identity: str  # host:port
    image: str


def write_tls(directory: Path) -> tuple[Path, Path, Path]:
    ca = new_ca("test")
    key, cert = ca.issue("node1", ["node1", "127.0.0.1", "localhost"])
    paths = directory / "ca.crt", directory / "node.crt", directory / "node.key"
    paths[0].write_bytes(ca.cert_pem)
    paths[1].write_bytes(cert)
    paths[2].write_bytes(key)
    return paths


def wait_https(url: str, ca: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url}: the server exited:\n{log.read_text()[-2000:]}")
        try:
            if requests.get(url, verify=str(ca), timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url}: no https answer in 60 s:\n{log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsCloud]:
    base = tmp_path_factory.mktemp("tls")
    ca, cert, key = write_tls(base)
    identity, image = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    settings = {"state_dir": str(base / "state"), "log": {"level": "WARNING"},
                "identity": {"listen": identity}, "image": {"listen": image},
                "tls": {"cert_file": str(cert), "key_file": str(key), "ca_file": str(ca)}}
    config = base / "haven.yaml"
    config.write_text(yaml.safe_dump(settings))
    env = {**os.environ, "HAVEN_ADMIN_PASSWORD": ADMIN_PASSWORD}
    subprocess.run([HAVEN, "bootstrap", "--config", str(config)], check=True, env=env,
                   capture_output=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for service, listen in (("identity", identity), ("image", image)):
            log = base / f"{service}.log"
            with open(log, "wb") as out:
                procs.append(subprocess.Popen(
                    [HAVEN, "serve", service, "--workers", "1", "--threads", "4",
                     "--config", str(config)], env=env, stdout=out, stderr=out,
                    start_new_session=True))
            wait_https(f"https://{listen}/healthcheck", ca, procs[-1], log)
        yield TlsCloud(load_config(config), ca, identity, image)
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)


def test_the_catalog_is_https_and_the_services_client_verifies(cloud: TlsCloud) -> None:
    clients = ServiceClients(cloud.cfg, interface="public")
    assert clients.identity_url == f"https://{cloud.identity}/v3"
    assert clients.endpoint("image") == f"https://{cloud.image}"
    assert clients.endpoint("identity") == f"https://{cloud.identity}/v3"
    assert clients.request("GET", "image", "/v2/images").status_code == 200


def test_a_plain_http_request_to_an_api_port_gets_no_answer(cloud: TlsCloud) -> None:
    for listen in (cloud.identity, cloud.image):
        # the port serves (over https) ...
        served = requests.get(f"https://{listen}/healthcheck", timeout=30,
                              verify=str(cloud.cfg.tls.ca_file))
        assert served.status_code == 200, served.text
        # ... and a plain http request to it gets no answer at all
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://{listen}/healthcheck", timeout=5)


def test_a_client_that_does_not_trust_the_cluster_ca_is_refused(cloud: TlsCloud,
                                                                tmp_path: Path) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://{cloud.identity}/healthcheck", timeout=5)  # system CAs
    stranger = tmp_path / "other-ca.crt"
    stranger.write_bytes(new_ca("other").cert_pem)
    cfg = load_config(None, {"identity.listen": cloud.identity, "state_dir": str(tmp_path),
                             "service_user.password": "x",
                             "tls.cert_file": str(cloud.cfg.tls.cert_file),
                             "tls.key_file": str(cloud.cfg.tls.key_file),
                             "tls.ca_file": str(stranger)})
    with pytest.raises(ServiceCallError, match="CERTIFICATE_VERIFY_FAILED"):
        ServiceClients(cfg).endpoint("image")
