"""AMQP over TLS to a real RabbitMQ with the cluster CA (issue 9).

The broker gets the AMQPS listener node-config writes (nodeconf.rabbitmq_tls_conf)
with a certificate from a cluster CA; Haven's bus connects with ``amqps://`` and
verifies the broker against that CA and its name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.common.bus import BusError
from core.common.bus.amqp import AmqpBus
from ha.bootstrap import nodeconf
from ha.bootstrap.tls import new_ca
from tests.rabbitmq import RabbitMQ, free_port


@dataclass
class TlsBroker:
    broker: RabbitMQ
    ca: Path
    port: int

    def url(self, host: str = "localhost", scheme: str = "amqps") -> str:
        return f"{scheme}://guest:guest@{host}:{self.port}/%2F"


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    base = tmp_path_factory.mktemp("amqps")
    tls = base / "tls"
    tls.mkdir()
    ca = new_ca("test")
    key, cert = ca.issue("broker", ["localhost"])  # not 127.0.0.1: see the name test
    (tls / "ca.crt").write_bytes(ca.cert_pem)
    (tls / "node.crt").write_bytes(cert)
    (tls / "node.key").write_bytes(key)
    port = free_port()
    broker = RabbitMQ(base / "broker",
                      extra_conf=nodeconf.rabbitmq_tls_conf(str(tls), f"127.0.0.1:{port}"))
    broker.start()
    try:
        yield TlsBroker(broker, tls / "ca.crt", port)
    finally:
        broker.close()


def ping(url: str, ca: Path | None) -> None:
    bus = AmqpBus([url], name="tls-test", connect_timeout=5,
                  ca_file=str(ca) if ca else None)
    try:
        bus.ping()
    finally:
        bus.close()


def test_the_bus_talks_amqps_verified_against_the_cluster_ca(tls_broker: TlsBroker) -> None:
    ping(tls_broker.url(), tls_broker.ca)


def test_a_broker_the_cluster_ca_did_not_sign_is_refused(tls_broker: TlsBroker,
                                                         tmp_path: Path) -> None:
    stranger = tmp_path / "other.crt"
    stranger.write_bytes(new_ca("other").cert_pem)
    ping(tls_broker.url(), tls_broker.ca)  # the broker answers; only the CA differs below
    with pytest.raises(BusError, match="CERTIFICATE_VERIFY_FAILED"):
        ping(tls_broker.url(), stranger)
    with pytest.raises(BusError, match="CERTIFICATE_VERIFY_FAILED"):
        ping(tls_broker.url(), None)  # the system's CAs do not know the cluster's


def test_a_name_the_certificate_does_not_carry_is_refused(tls_broker: TlsBroker) -> None:
    """The same broker and CA reached as 127.0.0.1, a name its certificate does not
    carry: the host name check refuses it (a cluster CA signs every node, so the CA
    alone does not tell one node from another)."""
    ping(tls_broker.url(), tls_broker.ca)  # by its own name: answered
    with pytest.raises(BusError, match=r"hostname|IP address mismatch"):
        ping(tls_broker.url("127.0.0.1"), tls_broker.ca)


def test_plain_amqp_to_the_tls_listener_gets_no_session(tls_broker: TlsBroker) -> None:
    ping(tls_broker.url(), tls_broker.ca)  # the listener serves amqps ...
    with pytest.raises(BusError):  # ... and a plain AMQP client gets no session on it
        ping(tls_broker.url(scheme="amqp"), None)
