"""The identity API over real HTTP, on SQLite and on a real MariaDB (``db_url`` params)."""

from __future__ import annotations

from typing import Any

import requests

from core.common.tokens import KeyRepository
from tests.conftest import ADMIN_PASSWORD, IdentityServer


def call(server: IdentityServer, method: str, path: str, token: str | None = None,
         json: Any = None, data: str | None = None, **headers: str) -> requests.Response:
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    if token:
        hdrs["X-Auth-Token"] = token
    return requests.request(method, server.url + path, json=json, data=data, headers=hdrs,
                            timeout=30)


def make_member(server: IdentityServer, admin: str, project: str = "demo",
                user: str = "alice", password: str = "alice-pw") -> tuple[str, str]:
    """Create ``project`` and ``user`` with the member role there; return their ids."""
    p = call(server, "POST", "/v3/projects", admin, json={"project": {"name": project}})
    assert p.status_code == 201, p.text
    u = call(server, "POST", "/v3/users", admin,
             json={"user": {"name": user, "password": password}})
    assert u.status_code == 201, u.text
    roles = call(server, "GET", "/v3/roles?name=member", admin).json()["roles"]
    pid, uid = p.json()["project"]["id"], u.json()["user"]["id"]
    grant = call(server, "PUT", f"/v3/projects/{pid}/users/{uid}/roles/{roles[0]['id']}", admin)
    assert grant.status_code == 204
    return pid, uid


def test_version_discovery(identity: IdentityServer) -> None:
    root = call(identity, "GET", "/")
    assert root.status_code == 300
    assert root.json()["versions"]["values"][0]["id"].startswith("v3")
    v3 = call(identity, "GET", "/v3")
    assert v3.status_code == 200
    assert v3.json()["version"]["links"][0]["href"] == f"{identity.url}/v3/"


def test_password_token_has_keystone_shape(identity: IdentityServer) -> None:
    resp = requests.post(f"{identity.url}/v3/auth/tokens", timeout=30, json={"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"name": "Default"}, "password": ADMIN_PASSWORD}}},
        "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}})
    assert resp.status_code == 201
    assert resp.headers["X-Openstack-Request-Id"].startswith("req-")
    token = resp.json()["token"]
    # the header is the token the body describes: validating it gives back the same one
    subject = resp.headers["X-Subject-Token"]
    checked = requests.get(f"{identity.url}/v3/auth/tokens", timeout=30, headers={
        "X-Auth-Token": subject, "X-Subject-Token": subject})
    assert checked.status_code == 200, checked.text
    assert checked.headers["X-Subject-Token"] == subject
    assert (checked.json()["token"]["user"]["id"], checked.json()["token"]["expires_at"]) == (
        token["user"]["id"], token["expires_at"])
    assert token["methods"] == ["password"]
    assert token["user"]["name"] == "admin"
    assert token["project"]["name"] == "admin"
    assert {r["name"] for r in token["roles"]} == {"admin", "member", "reader"}
    identity_svc = next(s for s in token["catalog"] if s["type"] == "identity")
    assert {e["interface"] for e in identity_svc["endpoints"]} == {"public", "internal", "admin"}
    assert token["expires_at"].endswith("Z")


def test_wrong_password_and_unknown_user_get_401(identity: IdentityServer) -> None:
    for user, password in (("admin", "wrong"), ("nobody", "x")):
        resp = requests.post(f"{identity.url}/v3/auth/tokens", timeout=30, json={"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"id": "default"}, "password": password}}}}})
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == 401


def test_bad_input_gets_400_naming_the_problem(identity: IdentityServer) -> None:
    resp = call(identity, "POST", "/v3/auth/tokens", data="{not json",
                Content_Type="application/json")
    assert resp.status_code == 400
    assert "Malformed JSON" in resp.json()["error"]["message"]
    resp = call(identity, "POST", "/v3/auth/tokens", json={"auth": {}})
    assert resp.status_code == 400
    assert "'auth.identity'" in resp.json()["error"]["message"]
    resp = call(identity, "POST", "/v3/auth/tokens", json={"auth": {"identity": {
        "methods": ["password"], "password": {"user": {"name": "admin", "password": 7,
                                                         "domain": {"id": "default"}}}}}})
    assert resp.status_code == 400
    assert "password" in resp.json()["error"]["message"]
    admin = identity.password_token()
    resp = call(identity, "POST", "/v3/projects", admin, json={"project": {"name": ""}})
    assert resp.status_code == 400 and "'name'" in resp.json()["error"]["message"]
    resp = call(identity, "POST", "/v3/users", admin, json={"user": {"name": "x",
                                                                      "enabled": "yes"}})
    assert resp.status_code == 400 and "'enabled'" in resp.json()["error"]["message"]
    resp = call(identity, "POST", "/v3/projects", admin, json=["project"])
    assert resp.status_code == 400


def test_unknown_path_404_wrong_method_405_all_json(identity: IdentityServer) -> None:
    resp = call(identity, "GET", "/v3/nothing-here")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == 404
    assert resp.headers["X-Openstack-Request-Id"].startswith("req-")
    resp = call(identity, "PUT", "/v3/auth/tokens")
    assert resp.status_code == 405 and resp.json()["error"]["code"] == 405


def test_no_token_401(identity: IdentityServer) -> None:
    assert call(identity, "GET", "/v3/projects").status_code == 401
    assert call(identity, "GET", "/v3/projects", "garbage").status_code == 401


def test_validate_check_and_revoke(identity: IdentityServer) -> None:
    admin = identity.password_token()
    subject = identity.password_token()
    got = call(identity, "GET", "/v3/auth/tokens", admin, X_Subject_Token=subject)
    assert got.status_code == 200 and got.json()["token"]["user"]["name"] == "admin"
    nocat = call(identity, "GET", "/v3/auth/tokens?nocatalog", admin, X_Subject_Token=subject)
    assert "catalog" not in nocat.json()["token"]
    assert call(identity, "HEAD", "/v3/auth/tokens", admin,
                X_Subject_Token=subject).status_code == 200
    assert call(identity, "DELETE", "/v3/auth/tokens", admin,
                X_Subject_Token=subject).status_code == 204
    assert call(identity, "GET", "/v3/auth/tokens", admin,
                X_Subject_Token=subject).status_code == 404
    assert call(identity, "GET", "/v3/projects", subject).status_code == 401
    assert call(identity, "GET", "/v3/projects", admin).status_code == 200


def test_token_method_rescopes_and_keeps_expiry(identity: IdentityServer) -> None:
    make_member(identity, identity.password_token())
    unscoped = identity.password_token("alice", "alice-pw", project=None)
    body = call(identity, "GET", "/v3/auth/tokens", unscoped, X_Subject_Token=unscoped).json()
    assert "project" not in body["token"] and "catalog" not in body["token"]
    resp = requests.post(f"{identity.url}/v3/auth/tokens", timeout=30, json={"auth": {
        "identity": {"methods": ["token"], "token": {"id": unscoped}},
        "scope": {"project": {"name": "demo", "domain": {"id": "default"}}}}})
    assert resp.status_code == 201
    scoped = resp.json()["token"]
    assert scoped["project"]["name"] == "demo"
    assert scoped["expires_at"] == body["token"]["expires_at"]
    assert scoped["audit_ids"][1] == body["token"]["audit_ids"][0]


def test_member_refused_admin_operations_but_sees_own_project(identity: IdentityServer) -> None:
    admin = identity.password_token()
    pid, uid = make_member(identity, admin)
    member = identity.password_token("alice", "alice-pw", "demo")
    assert call(identity, "POST", "/v3/projects", member,
                json={"project": {"name": "evil"}}).status_code == 403
    assert call(identity, "GET", "/v3/users", member).status_code == 403
    assert call(identity, "GET", f"/v3/projects/{pid}", member).status_code == 200
    admin_pid = call(identity, "GET", "/v3/projects?name=admin", admin).json()["projects"][0]
    assert call(identity, "GET", f"/v3/projects/{admin_pid['id']}", member).status_code == 403
    assert call(identity, "GET", f"/v3/users/{uid}", member).status_code == 200
    # and a member may not scope to a project where it has no role
    resp = requests.post(f"{identity.url}/v3/auth/tokens", timeout=30, json={"auth": {
        "identity": {"methods": ["token"], "token": {"id": member}},
        "scope": {"project": {"id": admin_pid["id"]}}}})
    assert resp.status_code == 401


def test_disabling_user_invalidates_tokens(identity: IdentityServer) -> None:
    admin = identity.password_token()
    _, uid = make_member(identity, admin)
    member = identity.password_token("alice", "alice-pw", "demo")
    assert call(identity, "GET", "/v3/auth/projects", member).status_code == 200
    resp = call(identity, "PATCH", f"/v3/users/{uid}", admin, json={"user": {"enabled": False}})
    assert resp.status_code == 200 and resp.json()["user"]["enabled"] is False
    assert call(identity, "GET", "/v3/auth/projects", member).status_code == 401
    resp = requests.post(f"{identity.url}/v3/auth/tokens", timeout=30, json={"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "id": uid, "password": "alice-pw"}}}}})
    assert resp.status_code == 401


def test_password_change_invalidates_tokens(identity: IdentityServer) -> None:
    admin = identity.password_token()
    _, uid = make_member(identity, admin)
    member = identity.password_token("alice", "alice-pw", "demo")
    bad = call(identity, "POST", f"/v3/users/{uid}/password", member,
               json={"user": {"original_password": "wrong", "password": "new-pw"}})
    assert bad.status_code == 401
    ok = call(identity, "POST", f"/v3/users/{uid}/password", member,
              json={"user": {"original_password": "alice-pw", "password": "new-pw"}})
    assert ok.status_code == 204
    assert call(identity, "GET", "/v3/auth/projects", member).status_code == 401
    identity.password_token("alice", "new-pw", "demo")


def test_role_removal_and_project_disable_invalidate_tokens(identity: IdentityServer) -> None:
    admin = identity.password_token()
    pid, uid = make_member(identity, admin)
    member = identity.password_token("alice", "alice-pw", "demo")
    role = call(identity, "GET", "/v3/roles?name=member", admin).json()["roles"][0]["id"]
    path = f"/v3/projects/{pid}/users/{uid}/roles/{role}"
    assert call(identity, "HEAD", path, admin).status_code == 204
    assert call(identity, "DELETE", path, admin).status_code == 204
    assert call(identity, "GET", f"/v3/projects/{pid}", member).status_code == 401
    assert call(identity, "HEAD", path, admin).status_code == 404
    assert call(identity, "PUT", path, admin).status_code == 204
    member = identity.password_token("alice", "alice-pw", "demo")
    assert call(identity, "PATCH", f"/v3/projects/{pid}", admin,
                json={"project": {"enabled": False}}).status_code == 200
    assert call(identity, "GET", f"/v3/projects/{pid}", member).status_code == 401


def test_crud_conflicts_and_not_found(identity: IdentityServer) -> None:
    admin = identity.password_token()
    assert call(identity, "POST", "/v3/projects", admin,
                json={"project": {"name": "p1"}}).status_code == 201
    dup = call(identity, "POST", "/v3/projects", admin, json={"project": {"name": "p1"}})
    assert dup.status_code == 409
    assert call(identity, "GET", "/v3/projects/nope", admin).status_code == 404
    assert call(identity, "DELETE", "/v3/domains/default", admin).status_code == 403
    dom = call(identity, "POST", "/v3/domains", admin, json={"domain": {"name": "d2"}}).json()
    did = dom["domain"]["id"]
    assert call(identity, "DELETE", f"/v3/domains/{did}", admin).status_code == 403
    assert call(identity, "PATCH", f"/v3/domains/{did}", admin,
                json={"domain": {"enabled": False}}).status_code == 200
    assert call(identity, "DELETE", f"/v3/domains/{did}", admin).status_code == 204
    listed = call(identity, "GET", "/v3/projects", admin).json()["projects"]
    assert {p["name"] for p in listed} >= {"admin", "p1"}


def test_key_rotation_keeps_live_tokens_valid(identity: IdentityServer) -> None:
    token = identity.password_token()
    keys = KeyRepository(identity.cfg.fernet_key_dir, identity.cfg.identity.max_active_keys)
    keys.rotate()
    # the server notices the new key set within a second (directory mtime)
    import time

    time.sleep(1.1)
    assert call(identity, "GET", "/v3/projects", token).status_code == 200
    newer = identity.password_token()
    assert call(identity, "GET", "/v3/projects", newer).status_code == 200
    keys.rotate()
    keys.rotate()  # max_active_keys=3: the key that sealed ``token`` is gone now
    time.sleep(1.1)
    assert call(identity, "GET", "/v3/projects", token).status_code == 401


def test_healthcheck_reports_database(identity: IdentityServer) -> None:
    resp = call(identity, "GET", "/healthcheck")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ok" and body["checks"]["database"]["ok"] is True


def test_a_second_controller_sees_revocations_at_once(identity: IdentityServer) -> None:
    """Two API processes on one database (two controllers): what one takes away,
    the other refuses on its very next request, warm caches notwithstanding."""
    from core.common.db import Database
    from core.common.server import AppServers, Listener
    from core.identity.app import create_app
    from tests.conftest import free_port

    listen = f"127.0.0.1:{free_port()}"
    other_db = Database(identity.cfg.database_url)
    servers = AppServers([Listener("identity", listen, create_app(identity.cfg, other_db))])
    servers.start()
    try:
        other = IdentityServer(f"http://{listen}", identity.cfg, other_db)
        admin = identity.password_token()
        pid, uid = make_member(identity, admin)
        member = identity.password_token("alice", "alice-pw", "demo")
        rescope = {"auth": {"identity": {"methods": ["token"], "token": {"id": member}},
                            "scope": {"project": {"id": pid}}}}
        # warm the second controller's caches: validation body, roles, project
        assert call(other, "GET", f"/v3/projects/{pid}", member).status_code == 200
        assert call(other, "POST", "/v3/auth/tokens", json=rescope).status_code == 201
        role = call(identity, "GET", "/v3/roles?name=member", admin).json()["roles"][0]["id"]
        assert call(identity, "DELETE", f"/v3/projects/{pid}/users/{uid}/roles/{role}",
                    admin).status_code == 204
        assert call(other, "GET", f"/v3/projects/{pid}", member).status_code == 401
        assert call(other, "POST", "/v3/auth/tokens", json=rescope).status_code == 401
        other_admin = other.password_token()
        assert call(other, "GET", "/v3/auth/tokens", other_admin,
                    X_Subject_Token=member).status_code == 404
        # a grant writes no event, yet a new login on the other controller sees it at once
        assert call(identity, "PUT", f"/v3/projects/{pid}/users/{uid}/roles/{role}",
                    admin).status_code == 204
        fresh = other.password_token("alice", "alice-pw", "demo")
        assert call(identity, "PATCH", f"/v3/users/{uid}", admin,
                    json={"user": {"enabled": False}}).status_code == 200
        assert call(other, "GET", f"/v3/projects/{pid}", fresh).status_code == 401
    finally:
        servers.stop()
        other_db.dispose()
