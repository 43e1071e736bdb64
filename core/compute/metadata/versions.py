"""The dated versions of a metadata tree (OpenStack's, EC2's): which one ``latest``
means, and whether a version has what a later one added."""

from __future__ import annotations

from dataclasses import dataclass

LATEST = "latest"


class UnknownVersion(KeyError):
    """Not a version of that metadata tree (nor ``latest``)."""


@dataclass(frozen=True)
class Versions:
    """A tree's versions, oldest first."""

    names: tuple[str, ...]

    def resolve(self, version: str) -> str:
        """``latest`` as the newest version; an unknown one raises :class:`UnknownVersion`."""
        if version == LATEST:
            return self.names[-1]
        if version not in self.names:
            raise UnknownVersion(version)
        return version

    def at_least(self, required: str, version: str) -> bool:
        """``version`` (resolved) has what ``required`` introduced."""
        return self.names.index(version) >= self.names.index(required)
