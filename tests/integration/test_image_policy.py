"""Who may do what to images: real users, roles and tokens from the identity API."""

from __future__ import annotations

from pathlib import Path

import requests

from tests.conftest import Services
from tests.integration.test_image_api import create, make

PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}


def add_user(services: Services, project: str, user: str, role: str,
             password: str = "pw") -> str:
    """A user with ``role`` on ``project`` (created if new); returns a scoped token."""
    found = services.call("GET", "identity", f"/v3/projects?name={project}").json()["projects"]
    pid = found[0]["id"] if found else services.call(
        "POST", "identity", "/v3/projects",
        json={"project": {"name": project}}).json()["project"]["id"]
    uid = services.call("POST", "identity", "/v3/users", json={
        "user": {"name": user, "password": password}}).json()["user"]["id"]
    rid = services.call("GET", "identity", f"/v3/roles?name={role}").json()["roles"][0]["id"]
    assert services.call("PUT", "identity",
                         f"/v3/projects/{pid}/users/{uid}/roles/{rid}").status_code == 204
    return services.token(user, password, project)


def unscoped(services: Services, user: str, password: str = "pw") -> str:
    resp = requests.post(f"{services.url('identity')}/v3/auth/tokens", timeout=30, json={
        "auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": password}}}}})
    assert resp.status_code == 201, resp.text
    return resp.headers["X-Subject-Token"]


def put_file(services: Services, image_id: str, data: bytes, token: str) -> int:
    return services.call("PUT", "image", f"/v2/images/{image_id}/file", token, data=data,
                         headers={"Content-Type": "application/octet-stream"}).status_code


def patch(services: Services, image_id: str, token: str, path: str, value: object) -> int:
    return services.call("PATCH", "image", f"/v2/images/{image_id}", token, headers=PATCH,
                         json=[{"op": "replace", "path": path, "value": value}]).status_code


def test_reader_reads_and_never_writes(services: Services, tmp_path: Path) -> None:
    member = add_user(services, "proj-a", "mia", "member")
    reader = add_user(services, "proj-a", "rita", "reader")
    data = make(tmp_path, "raw")
    image_id = create(services, "raw", token=member, visibility="private")
    # Writes: refused, and nothing changed.
    resp = services.call("POST", "image", "/v2/images", reader, json={
        "name": "r", "disk_format": "raw", "container_format": "bare"})
    assert resp.status_code == 403, resp.text
    assert put_file(services, image_id, data, reader) == 403
    assert patch(services, image_id, reader, "/name", "renamed") == 403
    assert services.call("PUT", "image", f"/v2/images/{image_id}/tags/t", reader
                         ).status_code == 403
    assert services.call("DELETE", "image", f"/v2/images/{image_id}", reader
                         ).status_code == 403
    # Reads: the project's private image, its data once uploaded.
    assert put_file(services, image_id, data, member) == 204
    shown = services.call("GET", "image", f"/v2/images/{image_id}", reader)
    assert shown.status_code == 200 and shown.json()["name"] == "img-raw"
    listed = services.call("GET", "image", "/v2/images", reader).json()["images"]
    assert image_id in [i["id"] for i in listed]
    got = services.call("GET", "image", f"/v2/images/{image_id}/file", reader)
    assert got.status_code == 200 and got.content == data


def test_unscoped_token_never_writes(services: Services, tmp_path: Path) -> None:
    member = add_user(services, "proj-u", "una", "member")
    token = unscoped(services, "una")
    image_id = create(services, "raw", token=member)
    resp = services.call("POST", "image", "/v2/images", token, json={
        "name": "u", "disk_format": "raw", "container_format": "bare"})
    assert resp.status_code == 403, resp.text
    for method, path, kwargs in (
            ("PUT", f"/v2/images/{image_id}/file", {"data": make(tmp_path, "raw")}),
            ("DELETE", f"/v2/images/{image_id}", {}),
            ("PATCH", f"/v2/images/{image_id}", {"json": [
                {"op": "replace", "path": "/visibility", "value": "community"}]})):
        assert services.call(method, "image", path, token, **kwargs).status_code in (403, 404)
    # none of them happened: still there, no data, not made community
    shown = services.call("GET", "image", f"/v2/images/{image_id}", member)
    assert shown.status_code == 200, shown.text
    assert (shown.json()["visibility"], shown.json()["status"]) == ("shared", "queued")


def test_member_writes_in_its_project_admin_for_public_and_others(services: Services,
                                                                  tmp_path: Path) -> None:
    alice = add_user(services, "proj-a", "alice", "member")
    bob = add_user(services, "proj-b", "bob", "member")
    image_id = create(services, "raw", token=alice)
    assert patch(services, image_id, alice, "/name", "mine") == 200
    assert put_file(services, image_id, make(tmp_path, "raw"), alice) == 204
    # Visibility: community is the owner's call (Glance's communitize_image),
    # public the administrator's (publicize_image).
    assert patch(services, image_id, alice, "/visibility", "public") == 403
    assert patch(services, image_id, alice, "/visibility", "community") == 200
    # Another project's member sees a community image and cannot change it.
    assert services.call("GET", "image", f"/v2/images/{image_id}", bob).status_code == 200
    assert patch(services, image_id, bob, "/name", "theirs") == 403
    assert patch(services, image_id, bob, "/visibility", "private") == 403
    assert services.call("DELETE", "image", f"/v2/images/{image_id}", bob).status_code == 403
    assert patch(services, image_id, alice, "/owner", "proj-b") == 403
    # The administrator publishes it and may change any project's image.
    admin = services.admin_token
    assert patch(services, image_id, admin, "/visibility", "public") == 200
    assert patch(services, image_id, admin, "/name", "published") == 200
    listed = services.call("GET", "image", "/v2/images", bob).json()["images"]
    assert image_id in [i["id"] for i in listed]
    assert services.call("DELETE", "image", f"/v2/images/{image_id}", alice).status_code == 204
