"""The image API: upload checks with qemu-img, visibility, and the stock SDK."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import Services


def make(tmp_path: Path, fmt: str, *extra: str, name: str = "disk") -> bytes:
    path = tmp_path / f"{name}.{fmt}"
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, *extra, str(path), "4M"],
                   check=True)
    return path.read_bytes()


def create(services: Services, disk_format: str, token: str | None = None,
           **extra: object) -> str:
    resp = services.call("POST", "image", "/v2/images", token, json={
        "name": f"img-{disk_format}", "disk_format": disk_format,
        "container_format": "bare", **extra})
    assert resp.status_code == 201, resp.text
    assert resp.json()["status"] == "queued"
    return str(resp.json()["id"])


def upload(services: Services, image_id: str, data: bytes) -> int:
    return services.call("PUT", "image", f"/v2/images/{image_id}/file", data=data,
                         headers={"Content-Type": "application/octet-stream"}).status_code


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "vmdk"])
def test_valid_images_upload_and_download_intact(services: Services, tmp_path: Path,
                                                 fmt: str) -> None:
    data = make(tmp_path, fmt)
    image_id = create(services, fmt)
    assert upload(services, image_id, data) == 204
    shown = services.call("GET", "image", f"/v2/images/{image_id}").json()
    assert shown["status"] == "active" and shown["size"] == len(data)
    assert shown["virtual_size"] == 4 << 20
    got = services.call("GET", "image", f"/v2/images/{image_id}/file")
    assert got.status_code == 200 and got.content == data
    assert upload(services, image_id, data) == 409  # data is immutable once uploaded


def test_dangerous_or_mismatched_images_are_refused(services: Services, tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "4M"], check=True)
    cases = {
        "backing file": ("qcow2", make(tmp_path, "qcow2", "-b", str(base), "-F", "qcow2",
                                       name="overlay")),
        "external data file": ("qcow2", make(tmp_path, "qcow2", "-o",
                                             f"data_file={tmp_path / 'ext.raw'}",
                                             name="datafile")),
        "qcow2 declared raw": ("raw", make(tmp_path, "qcow2", name="liar")),
        "raw declared qcow2": ("qcow2", b"\0" * 65536),
        "flat vmdk": ("vmdk", make(tmp_path, "vmdk", "-o", "subformat=monolithicFlat",
                                   name="flat")),
    }
    for what, (fmt, data) in cases.items():
        image_id = create(services, fmt)
        resp = services.call("PUT", "image", f"/v2/images/{image_id}/file", data=data,
                             headers={"Content-Type": "application/octet-stream"})
        assert resp.status_code == 400, (what, resp.text)
        assert "rejected" in resp.text, what
        shown = services.call("GET", "image", f"/v2/images/{image_id}").json()
        assert shown["status"] == "queued", what  # nothing half-stored
    assert not [p for p in services.cfg.image_store_path.iterdir()]


def test_bad_metadata_is_a_400_naming_the_field(services: Services) -> None:
    resp = services.call("POST", "image", "/v2/images", json={"disk_format": "exe"})
    assert resp.status_code == 400 and "disk_format" in resp.text
    resp = services.call("POST", "image", "/v2/images", json={"min_ram": -1})
    assert resp.status_code == 400 and "min_ram" in resp.text


def test_private_images_are_invisible_to_other_projects(services: Services,
                                                        tmp_path: Path) -> None:
    alice = services.member("proj-a", "alice")
    bob = services.member("proj-b", "bob")
    image_id = create(services, "raw", token=alice, visibility="private")
    assert services.call("GET", "image", f"/v2/images/{image_id}", bob).status_code == 404
    listed = services.call("GET", "image", "/v2/images", bob).json()["images"]
    assert image_id not in [i["id"] for i in listed]
    resp = services.call("POST", "image", "/v2/images", alice, json={
        "name": "x", "visibility": "public"})
    assert resp.status_code == 403
    assert services.call("DELETE", "image", f"/v2/images/{image_id}", bob).status_code == 404
    assert services.call("DELETE", "image", f"/v2/images/{image_id}", alice).status_code == 204
