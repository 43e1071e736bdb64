"""The config drive: the metadata as an ISO9660 image labelled ``config-2``.

The same files Nova's ``metadata_for_config_drive`` yields: for every EC2
version ``ec2/<v>/meta-data.json`` (and ``user-data``), for every OpenStack
version and ``latest`` its ``meta_data.json``, ``user_data``,
``vendor_data.json``, ``network_data.json`` and ``vendor_data2.json`` as that
version has them. The image is made the way Nova's ``_make_iso9660`` makes it
(Rock Ridge and Joliet, lower case and dots allowed), with Debian's xorriso in
its mkisofs mode (``genisoimage`` if xorriso is missing).

User data may hold secrets: the staging tree and the image are created
readable by their owner only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from core.compute.metadata import ec2, openstack
from core.compute.metadata.model import InstanceDescription
from core.compute.metadata.versions import LATEST

LABEL = "config-2"
PUBLISHER = "Haven"


class ConfigDriveError(RuntimeError):
    """The image could not be made (no ISO tool, or the tool failed)."""


def files(desc: InstanceDescription,
          random: Callable[[int], bytes] = os.urandom) -> Iterator[tuple[str, bytes]]:
    """(path, content) of every file on the drive."""
    for version in [*ec2.VERSIONS, LATEST]:
        tree = ec2.tree(desc, version)
        if "user-data" in tree:
            yield f"ec2/{version}/user-data", tree["user-data"]
        yield f"ec2/{version}/meta-data.json", openstack.dumps(ec2.as_json(tree["meta-data"]))
    for version in [*openstack.VERSIONS, LATEST]:
        real = openstack.resolve_version(version)
        base = f"openstack/{version}"
        yield (f"{base}/{openstack.META_DATA}",
               openstack.dumps(openstack.meta_data(desc, real, random)))
        if desc.user_data is not None:
            yield f"{base}/{openstack.USER_DATA}", desc.user_data
        if openstack.at_least(openstack.HAVANA, real):
            yield f"{base}/{openstack.VENDOR_DATA}", openstack.dumps(openstack.vendor_data(desc))
        if openstack.at_least(openstack.LIBERTY, real):
            yield (f"{base}/{openstack.NETWORK_DATA}",
                   openstack.dumps(openstack.network_data(desc)))
        if openstack.at_least(openstack.NEWTON_TWO, real):
            yield (f"{base}/{openstack.VENDOR_DATA2}",
                   openstack.dumps(openstack.vendor_data2(desc)))


def write_tree(desc: InstanceDescription, root: Path) -> None:
    """The drive's files under ``root`` (an existing, private directory)."""
    for rel, data in files(desc):
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)


def iso_command(output: Path, tree: Path) -> list[str]:
    """The command that makes the image (xorriso preferred, else genisoimage)."""
    options = ["-o", str(output), "-ldots", "-allow-lowercase", "-allow-multidot", "-l",
               "-publisher", PUBLISHER, "-quiet", "-J", "-r", "-V", LABEL, str(tree)]
    if xorriso := shutil.which("xorriso"):
        return [xorriso, "-as", "mkisofs", *options]
    if genisoimage := shutil.which("genisoimage"):
        return [genisoimage, *options]
    raise ConfigDriveError("neither xorriso nor genisoimage is installed")


def build(desc: InstanceDescription, output: str | Path) -> Path:
    """Make the config drive of ``desc`` at ``output`` (replaced atomically, mode 0600)."""
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="haven-configdrive-",
                                     dir=output.parent) as staging:
        tree = Path(staging) / "tree"
        tree.mkdir(mode=0o700)
        write_tree(desc, tree)
        image = Path(staging) / "disk.config"
        os.close(os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        proc = subprocess.run(iso_command(image, tree), capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise ConfigDriveError(f"making the ISO failed ({proc.returncode}): "
                                   f"{proc.stderr.strip()[-500:]}")
        os.chmod(image, 0o600)
        os.replace(image, output)
    return output
