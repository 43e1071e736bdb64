"""The cluster's certificate authority and each node's certificate.

Every API on a cluster node is served over https, and the services verify one
another against this CA (not the system's public ones: a cluster's names and
addresses are its own). The CA is made once, by the first ``haven cluster
node-config`` (or the lab), in a directory the operator then copies to the
other nodes with the secrets file; each node's run issues that node a
certificate for every name a client may use to reach it: its name, its cluster
address, the VIP (whichever node holds it answers for it), and the loopback
names the node's own health checks use.

Keys are EC P-256 and written 0600 from their creation (core.common.files).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.common.files import write_private

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_DAYS = 3650
NODE_DAYS = 825  # the longest that TLS clients commonly accept; rerun node-config to renew


class CAError(Exception):
    """The CA directory cannot be used (a half-made CA, an unreadable key)."""


@dataclass(frozen=True)
class ClusterCA:
    key_pem: bytes
    cert_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def issue(self, common_name: str, names: Iterable[str], days: int = NODE_DAYS,
              now: datetime.datetime | None = None) -> tuple[bytes, bytes]:
        """A new key and a certificate for ``names`` (host names or IP addresses),
        usable by a server and as a client (the brokers and Galera peers are both)."""
        ca_key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise CAError("the cluster CA key is not an EC key")
        key = ec.generate_private_key(ec.SECP256R1())
        start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=5)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                .issuer_name(self.cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start)
                .not_valid_after(start + datetime.timedelta(days=days))
                .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, key_encipherment=False, content_commitment=False,
                    data_encipherment=False, key_agreement=True, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def _general_names(names: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):  # unique, in order
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def new_ca(cluster_name: str, now: datetime.datetime | None = None) -> ClusterCA:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster_name} cluster CA")])
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=5)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, key_encipherment=False, content_commitment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return ClusterCA(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def load_or_create_ca(directory: Path, cluster_name: str) -> ClusterCA:
    """The CA in ``directory``, made there (key 0600) if the directory has none.
    A directory with only one of the two files is refused: completing it would
    make a second CA that the other nodes do not trust."""
    key_path, cert_path = directory / CA_KEY, directory / CA_CERT
    if key_path.exists() != cert_path.exists():
        raise CAError(f"{directory}: has {CA_KEY if key_path.exists() else CA_CERT} "
                      f"without {CA_CERT if key_path.exists() else CA_KEY}")
    if key_path.exists():
        try:
            return ClusterCA(key_path.read_bytes(), cert_path.read_bytes())
        except OSError as exc:
            raise CAError(f"{directory}: {exc.strerror}") from None
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = new_ca(cluster_name)
    write_private(key_path, ca.key_pem)
    write_private(cert_path, ca.cert_pem, 0o644)
    return ca
