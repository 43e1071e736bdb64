"""Image uploads cannot make QEMU open a file the uploader chose.

The attacks, each through the real image API (and real qemu-img where it
runs): a VMDK descriptor naming a host file uploaded as raw (QEMU's probe
does not recognise a descriptor that starts with a blank line, ``-f vmdk``
still parses it) and then switched to vmdk; a format PATCH while the upload
is being checked; qcow2 images naming a backing or data file.
"""

from __future__ import annotations

import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.conftest import Services
from tests.integration.test_image_api import create, make, upload

# What qemu-img -f vmdk opens: /etc/passwd as the disk. QEMU's probe sees raw.
DESCRIPTOR = (b'\n# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
              b'createType="monolithicFlat"\n\nRW 8 FLAT "/etc/passwd" 0\n')
GLANCE_403 = "can be only replaced for a queued image"


def status(services: Services, image_id: str) -> dict[str, object]:
    resp = services.call("GET", "image", f"/v2/images/{image_id}")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_descriptor_naming_a_host_file_is_refused_as_raw_and_as_vmdk(
        services: Services) -> None:
    for fmt, data in (("raw", DESCRIPTOR), ("raw", DESCRIPTOR.lstrip(b"\n")),
                      ("vmdk", DESCRIPTOR), ("vmdk", DESCRIPTOR.lstrip(b"\n"))):
        image_id = create(services, fmt)
        assert upload(services, image_id, data) == 400, (fmt, data[:2])
        assert status(services, image_id)["status"] == "queued"
    assert not list(services.cfg.image_store_path.iterdir())


def test_qcow2_naming_other_files_is_refused(services: Services, tmp_path: Path) -> None:
    """Even where qemu-img cannot open it (a missing data file): the bytes decide."""
    base = tmp_path / "base.raw"
    base.write_bytes(b"\0" * 4096)
    backing = make(tmp_path, "qcow2", "-b", str(base), "-F", "raw", name="backing")
    missing_data_file = make(tmp_path, "qcow2", "-b", str(base), "-F", "raw", "-o",
                             f"data_file={tmp_path / 'gone.raw'}", name="datafile")
    (tmp_path / "gone.raw").unlink()
    # A backing file behind an incompatible-feature bit qemu-img does not know:
    # its probe fails, and a probe that fails is no evidence the data is raw.
    unprobeable = bytearray(backing)
    unprobeable[72:80] = struct.pack(">Q", struct.unpack(">Q", backing[72:80])[0] | 1 << 40)
    for fmt, data in (("qcow2", backing), ("raw", backing), ("qcow2", missing_data_file),
                      ("raw", missing_data_file), ("raw", bytes(unprobeable)),
                      ("qcow2", bytes(unprobeable))):
        image_id = create(services, fmt)
        resp = services.call("PUT", "image", f"/v2/images/{image_id}/file", data=data,
                             headers={"Content-Type": "application/octet-stream"})
        assert resp.status_code == 400, (fmt, resp.text)
        assert status(services, image_id)["status"] == "queued"


def test_formats_are_fixed_while_the_upload_is_saving(services: Services,
                                                      tmp_path: Path) -> None:
    data = make(tmp_path, "raw")
    image_id = create(services, "raw")
    release = threading.Event()
    result: dict[str, int] = {}

    def body() -> Iterator[bytes]:
        yield data[:4096]
        release.wait()
        yield data[4096:]

    def put() -> None:
        result["status"] = services.call(
            "PUT", "image", f"/v2/images/{image_id}/file", data=body(),
            headers={"Content-Type": "application/octet-stream"}).status_code

    uploader = threading.Thread(target=put)
    uploader.start()
    try:
        while status(services, image_id)["status"] != "saving":
            threading.Event().wait(0.05)
        for key, value in (("container_format", "ovf"), ("disk_format", "vmdk")):
            resp = services.call("PATCH", "image", f"/v2/images/{image_id}", json=[
                {"op": "replace", "path": f"/{key}", "value": value}],
                headers={"Content-Type": "application/openstack-images-v2.1-json-patch"})
            assert resp.status_code == 403, (key, resp.text)
            assert GLANCE_403 in resp.text and key in resp.text
    finally:
        release.set()
        uploader.join()
    assert result["status"] == 204
    shown = status(services, image_id)
    assert (shown["status"], shown["disk_format"], shown["container_format"]) == (
        "active", "raw", "bare")
    resp = services.call("PATCH", "image", f"/v2/images/{image_id}", json=[
        {"op": "replace", "path": "/disk_format", "value": "vmdk"}],
        headers={"Content-Type": "application/openstack-images-v2.1-json-patch"})
    assert resp.status_code == 403 and GLANCE_403 in resp.text


@pytest.mark.mariadb
@pytest.mark.parametrize("db_url", ["mariadb"], indirect=True)  # row locks hold the window open
def test_format_changed_between_read_and_claim_fails_the_claim(services: Services) -> None:
    """The PATCH that commits after the upload read the image, before it claimed it.

    A transaction of the test's own changes disk_format to vmdk (as a PATCH
    would) and holds the row; the upload, which has already read ``raw``,
    is seen (in the process list) issuing its claim, which waits on the row;
    then the change commits. The claim must see
    the format it checks against has moved and refuse: checking a descriptor
    as raw and storing it as vmdk is the attack.
    """
    image_id = create(services, "raw")
    result: dict[str, int] = {}
    with services.db.engine.connect() as patcher, services.db.engine.connect() as watcher:
        patcher.execute(text("UPDATE images SET disk_format='vmdk' WHERE id=:i"),
                        {"i": image_id})

        def put() -> None:
            result["status"] = upload(services, image_id, DESCRIPTOR)

        uploader = threading.Thread(target=put)
        uploader.start()
        while not watcher.execute(text(  # the upload's claim, waiting on the row
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                "WHERE INFO LIKE 'UPDATE images SET status=%saving%'")).scalar():
            watcher.rollback()
            threading.Event().wait(0.05)
        patcher.commit()
        uploader.join()
    assert result["status"] == 409
    shown = status(services, image_id)
    assert (shown["status"], shown["disk_format"]) == ("queued", "vmdk")
    assert not list(services.cfg.image_store_path.iterdir())
    # Retried, the upload is checked as what the image now says it is.
    assert upload(services, image_id, DESCRIPTOR) == 400


def test_qemu_img_is_never_asked_to_probe() -> None:
    """Every qemu-img in Haven names the format (-f, and -F for a backing file)."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(["grep", "-rn", "\"qemu-img\"", "core", "ha", "agents"], cwd=root,
                         capture_output=True, text=True, check=False).stdout
    calls = [line for line in out.splitlines() if line.strip()]
    assert calls
    for line in calls:
        assert '"-f"' in line, line
        if '"-b"' in line:
            assert '"-F"' in line, line


def test_compute_refuses_an_unsafe_image_stored_before_the_checks(services: Services,
                                                                  tmp_path: Path) -> None:
    """The descriptor attack as it would sit in a store filled before the fix.

    The row and file are written directly (the API refuses to make them now):
    an active vmdk image whose data names /etc/passwd. The compute agent's
    base cache must refuse it before any qemu-img or QEMU sees it, and keep
    nothing; a clean image next to it is cached as before.
    """
    from core.common.clients import ServiceCallError, ServiceClients
    from core.compute.images import ImageCache

    def stored(fmt: str, data: bytes) -> str:
        image_id = create(services, fmt)
        services.cfg.image_store_path.joinpath(image_id).write_bytes(data)
        with services.db.engine.begin() as conn:
            conn.execute(text("UPDATE images SET status='active', size=:n WHERE id=:i"),
                         {"n": len(data), "i": image_id})
        return image_id

    cache = ImageCache(tmp_path / "_base", ServiceClients(services.cfg))
    with pytest.raises(ServiceCallError, match="unsafe"):
        cache.ensure(stored("vmdk", DESCRIPTOR))
    assert not [p for p in (tmp_path / "_base").iterdir() if not p.name.endswith(".lock")]
    path, fmt = cache.ensure(stored("qcow2", make(tmp_path, "qcow2")))
    assert fmt == "qcow2" and path.read_bytes()[:4] == b"QFI\xfb"
