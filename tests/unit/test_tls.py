"""The cluster CA and the node certificates node-config writes (issue 9)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509

from core.common.cliutil import UsageError
from core.common.config import ConfigError, load_config
from ha.bootstrap import nodeconf
from ha.bootstrap.cib import ClusterPlan
from ha.bootstrap.tls import CA_CERT, CA_KEY, CAError, load_or_create_ca

PLAN = ClusterPlan(nodes=("n1", "n2"), vip="10.9.0.100/24", vip_nic="eth0",
                   addresses={"n1": "10.9.0.1", "n2": "10.9.0.2"})
SECRETS = nodeconf.Secrets(db_password="d", bus_password="b", service_password="s",
                           erlang_cookie="C")


def mode(path: Path) -> str:
    return oct(path.stat().st_mode & 0o777)


def test_the_ca_is_made_once_with_a_private_key_and_kept(tmp_path: Path) -> None:
    first = load_or_create_ca(tmp_path / "ca", "haven")
    assert mode(tmp_path / "ca" / CA_KEY) == "0o600"
    assert mode(tmp_path / "ca" / CA_CERT) == "0o644"
    constraints = first.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca
    assert load_or_create_ca(tmp_path / "ca", "haven") == first  # the same CA, not a new one


def test_a_half_made_ca_is_refused_not_completed(tmp_path: Path) -> None:
    ca = load_or_create_ca(tmp_path / "ca", "haven")
    (tmp_path / "ca" / CA_KEY).unlink()
    with pytest.raises(CAError, match=r"ca\.crt without ca\.key"):
        load_or_create_ca(tmp_path / "ca", "haven")
    assert (tmp_path / "ca" / CA_CERT).read_bytes() == ca.cert_pem


def test_a_node_certificate_names_the_node_its_address_the_vip_and_loopback(
        tmp_path: Path) -> None:
    ca = load_or_create_ca(tmp_path / "ca", "haven")
    files = nodeconf.node_files(PLAN, "n2", SECRETS, ca)
    cert = x509.load_pem_x509_certificate(files[nodeconf.TLS_CERT][0].encode())
    cert.verify_directly_issued_by(ca.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["n2", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(a) for a in (
        "10.9.0.2", "10.9.0.100", "127.0.0.1")]
    assert files[nodeconf.TLS_KEY][1] == 0o600 and files[nodeconf.TLS_CA][0] == ca.cert_pem.decode()
    written = nodeconf.write_node_files(PLAN, "n2", SECRETS, ca, tmp_path / "root")
    key = tmp_path / "root" / nodeconf.TLS_KEY.lstrip("/")
    assert key in written and mode(key) == "0o600"


def test_tls_needs_a_certificate_and_its_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set both or neither"):
        load_config(None, {"tls.cert_file": "/x.crt"})
    cfg = load_config(None, {"tls.cert_file": "/x.crt", "tls.key_file": "/x.key"})
    assert cfg.tls.scheme == "https" and cfg.tls.verify is True  # never unverified
    assert load_config(None).tls.scheme == "http"  # the all-in-one


def test_the_all_in_one_refuses_tls(tmp_path: Path) -> None:
    config = tmp_path / "haven.yaml"
    config.write_text("tls: {cert_file: /x.crt, key_file: /x.key}\n")
    from ha.cli import build_parser

    args = build_parser().parse_args(["all-in-one", "--config", str(config)])
    with pytest.raises(UsageError, match="plain http on its own host"):
        args.func(args)
