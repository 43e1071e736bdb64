"""Erlang distribution over TLS for RabbitMQ 3.10 (issue 9): the broker and
rabbitmqctl with node-config's ``-proto_dist inet_tls`` options and optfile."""

from __future__ import annotations

from pathlib import Path

from ha.bootstrap import nodeconf
from ha.bootstrap.tls import new_ca
from tests.rabbitmq import RabbitMQ


class DistTlsBroker(RabbitMQ):
    """The test broker, with distribution (the server's and its CLI's) over TLS."""

    def __init__(self, base: Path, optfile: Path) -> None:
        super().__init__(base)
        self.dist_args = nodeconf.rabbitmq_dist_args(str(optfile))
        self.tls = True

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.tls:
            env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] += " " + self.dist_args
            env["RABBITMQ_CTL_ERL_ARGS"] += " " + self.dist_args
        return env


def test_the_broker_and_its_cli_talk_erlang_distribution_over_tls(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    tls.mkdir()
    ca = new_ca("test")
    key, cert = ca.issue("localhost", ["localhost"])
    (tls / "ca.crt").write_bytes(ca.cert_pem)
    (tls / "node.crt").write_bytes(cert)
    (tls / "node.key").write_bytes(key)
    optfile = tmp_path / "inter_node_tls.config"
    optfile.write_text(nodeconf.rabbitmq_dist_tls(str(tls)))
    broker = DistTlsBroker(tmp_path / "broker", optfile)
    broker.start()
    try:
        result = broker.ctl("eval", "net_kernel:nodes_info().")
        assert result.returncode == 0, result.stderr
        assert '"localhost",tls,inet' in result.stdout  # the CLI's link is TLS
        assert broker.ctl("status", timeout=60).returncode == 0  # over TLS: answered
        broker.tls = False  # a CLI speaking plain distribution gets nowhere
        assert broker.ctl("status", timeout=60).returncode != 0
    finally:
        broker.tls = True
        broker.close()
