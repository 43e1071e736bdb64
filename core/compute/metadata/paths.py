"""One path of the metadata service, resolved for one instance (Nova's ``lookup``).

Paths that start with neither ``openstack`` nor ``ec2`` are EC2 paths, as in
Nova (``/latest/meta-data/`` is ``/ec2/latest/meta-data/``); ``/`` lists the
EC2 versions. Anything not found raises :class:`NotFound`: an unknown version,
a document the instance does not have (``user_data`` without user data), a
step below a leaf.
"""

from __future__ import annotations

import datetime
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.compute.metadata import ec2, openstack
from core.compute.metadata.model import InstanceDescription
from core.compute.metadata.versions import LATEST, UnknownVersion

TEXT = "text/plain"
JSON = "application/json"


class NotFound(LookupError):
    """No such path (for this instance)."""


@dataclass(frozen=True)
class Answer:
    body: bytes
    content_type: str


def _today() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")


def tokens_of(path: str) -> list[str]:
    """The path's components, normalised as Nova normalises (no ``..``, no trailing /)."""
    norm = posixpath.normpath("/" + path.lstrip("/"))
    return [t for t in norm.split("/") if t]


def resolve(desc: InstanceDescription, path: str,
            today: Callable[[], str] = _today) -> Answer:
    """The body and content type of ``path`` for ``desc``; :class:`NotFound` if none."""
    tokens = tokens_of(path)
    if not tokens:
        return Answer(_lines([*ec2.VERSIONS, LATEST]), TEXT)
    if tokens[0] not in ("ec2", "openstack"):
        tokens = ["ec2", *tokens]
    try:
        if tokens[0] == "openstack":
            return _openstack(desc, tokens[1:], today)
        return _ec2(desc, tokens[1:])
    except UnknownVersion:
        raise NotFound(path) from None


def _lines(items: list[str]) -> bytes:
    return "\n".join(items).encode()


def _openstack(desc: InstanceDescription, tokens: list[str],
               today: Callable[[], str]) -> Answer:
    if not tokens:
        return Answer(_lines(openstack.listed_versions(today())), TEXT)
    version = openstack.resolve_version(tokens[0])
    if len(tokens) == 1:
        return Answer(_lines(openstack.version_listing(desc, version)), TEXT)
    name = "/".join(tokens[1:])
    handlers: dict[str, Callable[[], Answer]] = {
        openstack.META_DATA: lambda: Answer(
            openstack.dumps(openstack.meta_data(desc, version)), JSON),
        openstack.NETWORK_DATA: lambda: Answer(
            openstack.dumps(openstack.network_data(desc)), TEXT),  # sic: Nova's type
    }
    if desc.user_data is not None:
        handlers[openstack.USER_DATA] = lambda: Answer(desc.user_data or b"", TEXT)
    if openstack.at_least(openstack.GRIZZLY, version):
        # Haven keeps no encrypted admin password: Nova's answer for none is empty.
        handlers[openstack.PASSWORD] = lambda: Answer(b"", TEXT)
    if openstack.at_least(openstack.HAVANA, version):
        handlers[openstack.VENDOR_DATA] = lambda: Answer(
            openstack.dumps(openstack.vendor_data(desc)), JSON)
    if openstack.at_least(openstack.NEWTON_TWO, version):
        handlers[openstack.VENDOR_DATA2] = lambda: Answer(
            openstack.dumps(openstack.vendor_data2(desc)), JSON)
    handler = handlers.get(name)
    if handler is None:
        raise NotFound(name)
    return handler()


def _ec2(desc: InstanceDescription, tokens: list[str]) -> Answer:
    if not tokens:
        return Answer(_lines([*ec2.VERSIONS, LATEST]), TEXT)
    node: Any = ec2.tree(desc, tokens[0])
    for token in tokens[1:]:
        if not isinstance(node, dict) or token not in node:
            raise NotFound("/".join(tokens))
        node = node[token]
    return Answer(ec2.listing(node), TEXT)
