"""Which instance a metadata request is for: the port that holds its source address.

A request arrives on a listener that serves exactly one network, from a
source IP. Within one network a fixed IP belongs to at most one port, so
(network id, source IP) names at most one instance; nothing else in the
request (headers, the path) is believed. An address that no instance, or more
than one, claims gets no answer (the app's 404): the service never guesses, so
no tenant reads another's metadata. The source address itself is trusted only
as far as the data path's anti-spoofing (port security) makes it true.

Two implementations of :class:`InstanceLookup`:

* :class:`CallableLookup`: asks a function (the compute agent's in-process
  view, or one that asks the compute and network APIs), and still checks the
  answer really owns the address.
* :class:`JsonFileLookup`: reads the file the hypervisor agent writes with
  :func:`write_instances_file` (re-read when it changes).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from core.compute.metadata.model import (
    InstanceDescription,
    InvalidDescription,
    dump_instances,
    load_instances,
)

LOG = logging.getLogger(__name__)


class LookupUnavailable(Exception):
    """Who owns an address cannot be known right now (the source is unreadable)."""


class InstanceLookup(Protocol):
    """Finds the instance whose port holds ``source_ip`` on ``network_id``."""

    def find(self, network_id: str, source_ip: str) -> InstanceDescription | None:
        """The instance, or None when no single instance owns the address.

        Raises :class:`LookupUnavailable` when that cannot be decided.
        """
        ...


class CallableLookup:
    """A lookup backed by a function ``(network_id, source_ip) -> description | None``.

    Whatever the function answers, an instance that does not hold ``source_ip``
    on ``network_id`` is not served (a buggy or stale answer must not leak
    another instance's data). Exceptions of the function mean "cannot tell".
    """

    def __init__(self, func: Callable[[str, str], InstanceDescription | None]) -> None:
        self.func = func

    def find(self, network_id: str, source_ip: str) -> InstanceDescription | None:
        try:
            desc = self.func(network_id, source_ip)
        except Exception as exc:
            raise LookupUnavailable(str(exc)) from exc
        if desc is not None and not desc.owns(network_id, source_ip):
            LOG.error("lookup answered instance %s for %s on network %s, which it does not "
                      "hold: not served", desc.uuid, source_ip, network_id)
            return None
        return desc


def _key(network_id: str, address: str) -> tuple[str, str]:
    return network_id, str(ipaddress.ip_address(address))


def index_by_address(
    descs: list[InstanceDescription],
) -> dict[tuple[str, str], InstanceDescription | None]:
    """(network id, address) -> instance; None where several instances claim one."""
    index: dict[tuple[str, str], InstanceDescription | None] = {}
    for desc in descs:
        for port in desc.ports:
            for ip in port.fixed_ips:
                key = _key(port.network_id, ip.ip_address)
                other = index.get(key)
                if key in index and (other is None or other.uuid != desc.uuid):
                    LOG.error("address %s on network %s claimed by several instances: "
                              "served to none", key[1], key[0])
                    index[key] = None
                else:
                    index[key] = desc
    return index


class JsonFileLookup:
    """A lookup that reads the hypervisor agent's instances file.

    The file is read again whenever it changes (inode, size or mtime), so the
    agent's atomic rewrite is seen on the next request. A file that is missing
    or malformed makes every lookup :class:`LookupUnavailable`: an old copy
    is not served, as an address may have moved to another tenant since.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._index: dict[tuple[str, str], InstanceDescription | None] = {}

    def _load(self) -> dict[tuple[str, str], InstanceDescription | None]:
        with self._lock:
            try:
                st = self.path.stat()
            except OSError as exc:
                self._stamp = None
                raise LookupUnavailable(f"{self.path}: {exc.strerror}") from exc
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp != self._stamp:
                self._stamp = None
                try:
                    doc = json.loads(self.path.read_bytes())
                    self._index = index_by_address(load_instances(doc))
                except (OSError, ValueError) as exc:  # InvalidDescription is a ValueError
                    LOG.error("metadata instances file %s unusable: %s", self.path, exc)
                    raise LookupUnavailable(f"{self.path}: {exc}") from exc
                self._stamp = stamp
            return self._index

    def find(self, network_id: str, source_ip: str) -> InstanceDescription | None:
        try:
            key = _key(network_id, source_ip)
        except ValueError:
            return None
        return self._load().get(key)


def write_instances_file(path: str | Path, descs: list[InstanceDescription]) -> None:
    """Write the instances file atomically, readable by its owner only (user data
    may hold secrets): a reader sees the old file or the new one, never half."""
    path = Path(path)
    doc = json.dumps(dump_instances(descs)).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(doc)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


__all__ = ["CallableLookup", "InstanceLookup", "InvalidDescription", "JsonFileLookup",
           "LookupUnavailable", "index_by_address", "write_instances_file"]
