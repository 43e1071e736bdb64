"""OpenSSH public keys as Nova's keypairs take them: checked, fingerprinted, generated.

A public key is one ``<type> <base64 blob> [comment]`` line (the ``.pub`` file
``ssh-keygen`` writes). It is accepted only if the blob decodes and
``cryptography`` loads it as a key of the named type, so a truncated key, a
private key pasted by mistake or two keys in one string are refused before
anything is stored (a guest given a key it cannot parse is a guest nobody can
log into).

The fingerprint is Nova's: the MD5 of the decoded blob as colon-separated hex
(``ssh-keygen -l -E md5`` prints the same digits).

A generated key is Ed25519 in OpenSSH's private key format, as the stock
``openstack keypair create`` makes on the client side; the private half exists
only in the answer to the request that made it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

GENERATED_COMMENT = "Generated-by-Haven"


class InvalidPublicKey(ValueError):
    """The text is not one OpenSSH public key that Haven can use (the reason says why)."""


@dataclass(frozen=True)
class PublicKey:
    """A checked public key: its line as stored, and Nova's fingerprint of it."""

    text: str
    fingerprint: str


@dataclass(frozen=True)
class GeneratedKey:
    """A new key pair: the private half in OpenSSH PEM, never stored by Haven."""

    public: PublicKey
    private_pem: str


def fingerprint(blob: bytes) -> str:
    """Nova's fingerprint: MD5 of the key blob, as ``aa:bb:...`` (not a security use)."""
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def parse_public_key(text: str) -> PublicKey:
    """Check ``text`` is one OpenSSH public key; raise InvalidPublicKey if not."""
    line = text.strip()
    if not line:
        raise InvalidPublicKey("the public key is empty")
    if "\n" in line or "\r" in line:
        raise InvalidPublicKey("the public key must be a single line (one key)")
    parts = line.split()
    if len(parts) < 2:
        raise InvalidPublicKey("expected '<type> <base64 key> [comment]'")
    key_type, encoded = parts[0], parts[1]
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidPublicKey("the key is not valid base64") from None
    try:
        serialization.load_ssh_public_key(f"{key_type} {encoded}".encode("ascii"))
    except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError) as exc:
        raise InvalidPublicKey(f"not a usable {key_type[:40]!r} public key ({exc})") from None
    return PublicKey(text=line, fingerprint=fingerprint(blob))


def generate() -> GeneratedKey:
    """A new Ed25519 key pair (the public line carries a Haven comment)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()).decode("ascii")
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode("ascii")
    return GeneratedKey(public=parse_public_key(f"{public} {GENERATED_COMMENT}"),
                        private_pem=private_pem)
