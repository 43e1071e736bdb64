"""Key pairs and an honest server create, through the real compute API (SQLite and a
real MariaDB), the stock ``openstack`` CLI and openstacksdk.

Nova's ``os-keypairs`` (import, generate, per user, microversions 2.2 and 2.10,
quota), ``key_name``/``user_data``/``config_drive`` at server create, and the
allow-list: a field Haven does not honour is a 400 naming it, and a refused
create leaves no server row and no port behind.

Hosts are compute service rows written directly (as in test_compute_api):
servers are placed but nothing boots.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import openstack
import pytest
import requests
from sqlalchemy import func, select

from core.compute.keypair_models import KeyPair
from core.compute.models import Instance
from tests.conftest import ADMIN_PASSWORD, CLIENT_ON_SQLITE, Services
from tests.integration.computeapi import Compute
from tests.integration.test_quotas import openstack_cli, project_id, race


@pytest.fixture
def compute(compute: Compute) -> Compute:
    """The shared compute API, with one host of room for 20 m1.tiny."""
    compute.add_host("h1", slots=20)
    return compute


def v(version: str) -> dict[str, str]:
    return {"OpenStack-API-Version": f"compute {version}"}


def user_id(services: Services, name: str) -> str:
    found = services.call("GET", "identity", f"/v3/users?name={name}").json()["users"]
    assert len(found) == 1
    return str(found[0]["id"])


def ssh_keygen(tmp_path: Path, name: str, kind: str = "ed25519") -> Path:
    """A key pair made by OpenSSH itself; returns the private key's path."""
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"{name}@test",
                    "-f", str(path)], check=True)
    return path


def md5_fingerprint(pub: Path) -> str:
    """What ``ssh-keygen -l -E md5`` says of a public key: Nova's fingerprint."""
    out = subprocess.run(["ssh-keygen", "-l", "-E", "md5", "-f", str(pub)], check=True,
                         capture_output=True, text=True).stdout
    return out.split()[1].removeprefix("MD5:")


def public_of(private_key: str, tmp_path: Path) -> str:
    """``ssh-keygen -y`` of a private key: its public line (type and blob)."""
    path = tmp_path / "given"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(private_key)
    out = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], check=True,
                         capture_output=True, text=True).stdout
    path.unlink()
    return " ".join(out.split()[:2])


def count_rows(services: Services, model: Any) -> int:
    return int(services.db.run_in_transaction(
        lambda s: s.scalar(select(func.count()).select_from(model))))


def port_count(services: Services) -> int:
    return len(services.call("GET", "network", "/v2.0/ports").json()["ports"])


def message(resp: requests.Response) -> str:
    body = resp.json()
    return str(next(iter(body.values()))["message"])


# ---- os-keypairs ------------------------------------------------------------------------
def test_import_generate_show_delete_as_nova(compute: Compute, tmp_path: Path) -> None:
    services = compute.services
    member = services.member("kp", "kp-user")
    key = ssh_keygen(tmp_path, "k1")
    pub = key.with_suffix(".pub").read_text()

    made = compute.call("POST", "/os-keypairs", member,
                        json={"keypair": {"name": "k1", "public_key": pub}})
    assert made.status_code == 200, made.text  # 2.1: 200, no type
    body = made.json()["keypair"]
    assert body["fingerprint"] == md5_fingerprint(key.with_suffix(".pub"))
    assert body["public_key"] == pub.strip() and "private_key" not in body
    assert body["user_id"] == user_id(services, "kp-user") and "type" not in body

    at22 = compute.call("POST", "/os-keypairs", member, headers=v("2.2"),
                        json={"keypair": {"name": "gen", "type": "ssh"}})
    assert at22.status_code == 201, at22.text
    generated = at22.json()["keypair"]
    assert generated["type"] == "ssh"
    # the private key answered once works with OpenSSH and matches the stored public key
    assert public_of(generated["private_key"], tmp_path) == " ".join(
        generated["public_key"].split()[:2])
    shown = compute.call("GET", "/os-keypairs/gen", member, headers=v("2.2")).json()["keypair"]
    assert "private_key" not in shown
    assert (shown["type"], shown["deleted"], shown["user_id"]) == (
        "ssh", False, body["user_id"])
    assert isinstance(shown["id"], int) and shown["created_at"]
    stored = services.db.run_in_transaction(lambda s: [
        (k.public_key, k.fingerprint) for k in s.scalars(select(KeyPair))])
    assert not any("PRIVATE" in text for row in stored for text in row)

    listed = compute.call("GET", "/os-keypairs", member).json()["keypairs"]
    assert [k["keypair"]["name"] for k in listed] == ["gen", "k1"]
    assert "type" not in listed[0]["keypair"]

    # another user may use the same name; the same user may not
    other = services.member("kp2", "kp2-user")
    assert compute.call("POST", "/os-keypairs", other, json={"keypair": {
        "name": "k1", "public_key": pub}}).status_code == 200
    dup = compute.call("POST", "/os-keypairs", member, json={"keypair": {
        "name": "k1", "public_key": pub}})
    assert dup.status_code == 409 and "k1" in message(dup)
    assert [k["keypair"]["name"] for k in compute.call(
        "GET", "/os-keypairs", other).json()["keypairs"]] == ["k1"]

    # delete: 202 at 2.1, 204 from 2.2; then 404
    assert compute.call("DELETE", "/os-keypairs/k1", member).status_code == 202
    assert compute.call("DELETE", "/os-keypairs/gen", member, headers=v("2.2")
                        ).status_code == 204
    gone = compute.call("GET", "/os-keypairs/k1", member)
    assert gone.status_code == 404 and "k1" in message(gone)
    assert compute.call("DELETE", "/os-keypairs/k1", member).status_code == 404


BAD_KEYPAIRS: list[tuple[dict[str, Any], str, str]] = [
    ({"name": "x", "type": "x509"}, "2.2", "keypair.type"),
    ({"name": "x", "type": "rsa"}, "2.2", "keypair.type"),
    ({"name": "x", "type": "ssh"}, "2.1", "keypair.type"),  # type needs 2.2
    ({"name": "x", "user_id": "u"}, "2.9", "keypair.user_id"),  # user_id needs 2.10
    ({"name": "x", "colour": "red"}, "2.10", "keypair.colour"),
    ({"name": "a/b"}, "2.1", "keypair.name"),
    ({"name": "caf\u00e9"}, "2.1", "keypair.name"),
    ({"name": " lead"}, "2.1", "keypair.name"),
    ({"name": ""}, "2.1", "keypair.name"),
    ({"name": "n" * 256}, "2.1", "keypair.name"),
    ({"name": 5}, "2.1", "keypair.name"),
    ({"name": "x", "public_key": "ssh-rsa AAAA"}, "2.1", "keypair.public_key"),
    ({"name": "x", "public_key": "not a key at all"}, "2.1", "keypair.public_key"),
    ({"name": "x", "public_key": "ssh-ed25519 !!!notbase64"}, "2.1", "keypair.public_key"),
    ({"name": "x", "public_key": ""}, "2.1", "keypair.public_key"),
    ({"name": "x", "public_key": None}, "2.1", "keypair.public_key"),
]


def test_bad_keypair_input_is_400_naming_the_field(compute: Compute) -> None:
    for spec, version, named in BAD_KEYPAIRS:
        resp = compute.call("POST", "/os-keypairs", json={"keypair": spec},
                            headers=v(version))
        assert resp.status_code == 400, (spec, resp.text)
        assert f"'{named}'" in message(resp), (named, message(resp))
    assert count_rows(compute.services, KeyPair) == 0


def test_malformed_public_keys_store_nothing(compute: Compute, tmp_path: Path) -> None:
    good = ssh_keygen(tmp_path, "g").with_suffix(".pub").read_text().split()
    private = ssh_keygen(tmp_path, "p", "rsa").read_text()
    blob = base64.b64decode(good[1])
    for bad in (f"{good[0]} {base64.b64encode(blob[:-5]).decode()}",  # truncated
                f"ssh-rsa {good[1]}",  # header says RSA, blob is Ed25519
                private,  # a private key pasted by mistake
                f"{good[0]} {good[1]}\n{good[0]} {good[1]}"):  # two keys
        resp = compute.call("POST", "/os-keypairs", json={"keypair": {
            "name": "bad", "public_key": bad}})
        assert resp.status_code == 400 and "'keypair.public_key'" in message(resp), bad
    assert count_rows(compute.services, KeyPair) == 0
    rsa = ssh_keygen(tmp_path, "r", "rsa").with_suffix(".pub")
    ecdsa = ssh_keygen(tmp_path, "e", "ecdsa").with_suffix(".pub")
    for name, pub in (("rsa", rsa), ("ecdsa", ecdsa)):
        made = compute.call("POST", "/os-keypairs", json={"keypair": {
            "name": name, "public_key": pub.read_text()}})
        assert made.status_code == 200, made.text
        assert made.json()["keypair"]["fingerprint"] == md5_fingerprint(pub)


def test_admin_acts_for_other_users_members_only_for_themselves(compute: Compute,
                                                                 tmp_path: Path) -> None:
    services = compute.services
    alice = services.member("pa", "alice")
    bob = services.member("pb", "bob")
    alice_id, bob_id = user_id(services, "alice"), user_id(services, "bob")
    pub = ssh_keygen(tmp_path, "a").with_suffix(".pub").read_text()
    assert compute.call("POST", "/os-keypairs", alice, json={"keypair": {
        "name": "mine", "public_key": pub}}).status_code == 200

    # bob can neither see nor touch alice's key, nor make one for her
    for method, path in (("GET", "/os-keypairs"), ("GET", "/os-keypairs/mine"),
                         ("DELETE", "/os-keypairs/mine")):
        resp = compute.call(method, f"{path}?user_id={alice_id}", bob, headers=v("2.10"))
        assert resp.status_code == 403, (method, path, resp.text)
    assert compute.call("GET", "/os-keypairs/mine", bob).status_code == 404
    assert compute.call("POST", "/os-keypairs", bob, headers=v("2.10"), json={"keypair": {
        "name": "planted", "public_key": pub, "user_id": alice_id}}).status_code == 403
    # asking for oneself by id is fine; user_id below 2.10 is refused, never ignored
    assert compute.call("GET", f"/os-keypairs?user_id={bob_id}", bob,
                        headers=v("2.10")).status_code == 200
    below = compute.call("GET", f"/os-keypairs?user_id={alice_id}", bob, headers=v("2.9"))
    assert below.status_code == 400 and "user_id" in message(below)

    # the admin lists, shows, creates for and deletes alice's keys
    listed = compute.call("GET", f"/os-keypairs?user_id={alice_id}", headers=v("2.10"))
    assert [k["keypair"]["name"] for k in listed.json()["keypairs"]] == ["mine"]
    assert compute.call("GET", f"/os-keypairs/mine?user_id={alice_id}",
                        headers=v("2.10")).json()["keypair"]["user_id"] == alice_id
    given = compute.call("POST", "/os-keypairs", headers=v("2.10"), json={"keypair": {
        "name": "from-admin", "public_key": pub, "user_id": alice_id}})
    assert given.status_code == 201 and given.json()["keypair"]["user_id"] == alice_id
    assert sorted(k["keypair"]["name"] for k in compute.call(
        "GET", "/os-keypairs", alice).json()["keypairs"]) == ["from-admin", "mine"]
    assert compute.call("DELETE", f"/os-keypairs/mine?user_id={alice_id}",
                        headers=v("2.10")).status_code == 204
    assert compute.call("GET", "/os-keypairs", headers=v("2.10")).json()["keypairs"] == []


def test_key_pairs_quota_per_user_holds_under_a_race(compute: Compute, tmp_path: Path) -> None:
    """The limit is the project's ``key_pairs``, counted per user; users racing at
    limit-1 get one success (the user's quota lock row serialises them)."""
    services = compute.services
    member = services.member("kq", "kq-user")
    pid = project_id(services, "kq")
    pub = ssh_keygen(tmp_path, "q").with_suffix(".pub").read_text()
    shown = compute.call("GET", f"/os-quota-sets/{pid}").json()["quota_set"]
    assert shown["key_pairs"] == 100
    assert compute.call("PUT", f"/os-quota-sets/{pid}", member, json={
        "quota_set": {"key_pairs": 9}}).status_code == 403
    assert compute.call("PUT", f"/os-quota-sets/{pid}", json={
        "quota_set": {"key_pairs": 2}}).status_code == 200
    limits = compute.call("GET", "/limits", member).json()["limits"]["absolute"]
    assert limits["maxTotalKeypairs"] == 2
    assert compute.call("POST", "/os-keypairs", member, json={"keypair": {
        "name": "one", "public_key": pub}}).status_code == 200

    statuses = race(8, lambda i: compute.call("POST", "/os-keypairs", member, json={
        "keypair": {"name": f"race-{i}", "public_key": pub}}))
    assert Counter(statuses) == Counter({200: 1, 403: 7}), statuses
    over = compute.call("POST", "/os-keypairs", member, json={"keypair": {
        "name": "more", "public_key": pub}})
    assert over.status_code == 403 and message(over) == "Quota exceeded, too many key pairs."
    # the count is per user: another user of the project still has room
    services.call("POST", "identity", "/v3/users", json={"user": {"name": "kq-two",
                                                                  "password": "pw"}})
    role = services.call("GET", "identity", "/v3/roles?name=member").json()["roles"][0]["id"]
    services.call("PUT", "identity",
                  f"/v3/projects/{pid}/users/{user_id(services, 'kq-two')}/roles/{role}")
    second = services.token("kq-two", "pw", "kq")
    assert compute.call("POST", "/os-keypairs", second, json={"keypair": {
        "name": "one", "public_key": pub}}).status_code == 200


# ---- server create -----------------------------------------------------------------------
def test_server_create_keeps_the_key_user_data_and_config_drive(compute: Compute,
                                                                 tmp_path: Path) -> None:
    services = compute.services
    member = services.member("sc", "sc-user")
    pub = ssh_keygen(tmp_path, "s").with_suffix(".pub").read_text()
    assert compute.call("POST", "/os-keypairs", member, json={"keypair": {
        "name": "mykey", "public_key": pub}}).status_code == 200
    user_data = base64.b64encode(b"#!/bin/sh\necho hello\n").decode()
    resp = compute.call("POST", "/servers", member, json={"server": {
        "name": "vm", "imageRef": compute.image, "flavorRef": "1", "networks": "auto",
        "key_name": "mykey", "user_data": user_data, "config_drive": True}})
    assert resp.status_code == 202, resp.text
    server_id = resp.json()["server"]["id"]
    shown = compute.call("GET", f"/servers/{server_id}", member).json()["server"]
    assert (shown["key_name"], shown["config_drive"]) == ("mykey", "True")
    assert "OS-EXT-SRV-ATTR:user_data" not in shown  # an admin's field
    assert "OS-EXT-SRV-ATTR:user_data" not in compute.call(
        "GET", f"/servers/{server_id}").json()["server"]  # from 2.3
    admin_view = compute.call("GET", f"/servers/{server_id}", headers=v("2.3")).json()
    assert admin_view["server"]["OS-EXT-SRV-ATTR:user_data"] == user_data
    # the key outlives its key pair on the server (the metadata service serves it)
    assert compute.call("DELETE", "/os-keypairs/mykey", member).status_code == 202
    key_data = services.db.run_in_transaction(lambda s: s.get(Instance, server_id).key_data)
    assert key_data == pub.strip()
    # no key, no user data: nothing stored, config drive off
    plain = compute.boot("plain", member).json()["server"]["id"]
    shown = compute.call("GET", f"/servers/{plain}", headers=v("2.3")).json()["server"]
    assert (shown["key_name"], shown["config_drive"],
            shown["OS-EXT-SRV-ATTR:user_data"]) == (None, "", None)
    # user data at the limit (65532 characters: the longest base64 within 65535) is taken
    edge = compute.call("POST", "/servers", member, json={"server": {
        "name": "edge", "imageRef": compute.image, "flavorRef": "1", "networks": "auto",
        "user_data": base64.b64encode(b"x" * 49149).decode()}})
    assert edge.status_code == 202, edge.text


def _cli_bdm(image: str) -> list[dict[str, Any]]:
    """What ``openstack server create --image`` sends besides imageRef."""
    return [{"uuid": image, "boot_index": 0, "source_type": "image",
             "destination_type": "local", "delete_on_termination": True}]


def test_refused_creates_name_the_field_and_leave_nothing(compute: Compute,
                                                           tmp_path: Path) -> None:
    services = compute.services
    member = services.member("rc", "rc-user")
    other = services.member("rc2", "rc2-user")
    pub = ssh_keygen(tmp_path, "o").with_suffix(".pub").read_text()
    assert compute.call("POST", "/os-keypairs", other, json={"keypair": {
        "name": "theirs", "public_key": pub}}).status_code == 200
    image = compute.image
    good = {"name": "x", "imageRef": image, "flavorRef": "1", "networks": "auto"}
    net = services.cfg.network.provider_name
    net_id = services.call("GET", "network", f"/v2.0/networks?name={net}").json()[
        "networks"][0]["id"]
    ports_before = port_count(services)
    too_big = base64.b64encode(b"x" * 49152).decode()  # 65536 characters of base64
    cases: list[tuple[dict[str, Any], str]] = [
        ({**good, "key_name": "nosuch"}, "Invalid key_name provided."),
        ({**good, "key_name": "theirs"}, "Invalid key_name provided."),  # another user's
        ({**good, "user_data": too_big}, "'server.user_data'"),
        ({**good, "user_data": "not base64!"}, "'server.user_data'"),
        ({**good, "config_drive": "perhaps"}, "'server.config_drive'"),
        ({**good, "colour": "red"}, "'server.colour'"),
        ({**good, "adminPass": "pw"}, "'server.adminPass'"),
        ({**good, "description": "d"}, "'server.description'"),
        ({**good, "personality": []}, "'server.personality'"),
        ({**good, "security_groups": [{"name": "nosuch"}]},
         "Security group nosuch not found for project"),
        ({**good, "security_groups": [{"nom": "default"}]}, "'server.security_groups[0]'"),
        ({**good, "block_device_mapping": []}, "'server.block_device_mapping'"),
        ({**good, "min_count": 2, "max_count": 2}, "'server.max_count'"),
        ({**good, "availability_zone": "elsewhere"}, "'server.availability_zone'"),
        ({**good, "networks": [{"uuid": net_id, "fixed_ip": "10.9.9.9"}]},
         "'server.networks[0].fixed_ip'"),
        ({**good, "block_device_mapping_v2": [
            {"uuid": "vol", "boot_index": 0, "source_type": "volume",
             "destination_type": "volume"}]}, "'server.block_device_mapping_v2[0].source_type'"),
        ({**good, "block_device_mapping_v2": [*_cli_bdm(image), {
            "boot_index": -1, "source_type": "blank", "destination_type": "local",
            "guest_format": "swap", "volume_size": 1}]}, "'server.block_device_mapping_v2'"),
        ({**good, "block_device_mapping_v2": [{**_cli_bdm(image)[0],
                                               "destination_type": "volume"}]},
         "'server.block_device_mapping_v2[0].destination_type'"),
        ({**good, "block_device_mapping_v2": [{**_cli_bdm(image)[0], "volume_size": 5}]},
         "'server.block_device_mapping_v2[0].volume_size'"),
        ({**good, "block_device_mapping_v2": [{**_cli_bdm(image)[0],
                                               "uuid": "another-image"}]},
         "'server.block_device_mapping_v2[0].uuid'"),
    ]
    for spec, named in cases:
        resp = compute.call("POST", "/servers", member, json={"server": spec})
        assert resp.status_code == 400, (spec, resp.text)
        assert named in message(resp), (named, message(resp))
    hinted = compute.call("POST", "/servers", member, json={
        "server": good, "os:scheduler_hints": {"different_host": ["x"]}})
    assert hinted.status_code == 400 and "different_host" in message(hinted)
    extra = compute.call("POST", "/servers", member, json={"server": good, "extra": {}})
    assert extra.status_code == 400 and "'extra'" in message(extra)
    # nothing of any refused create remains: no server row, no port
    assert count_rows(services, Instance) == 0
    assert port_count(services) == ports_before
    # the CLI's image-only block device mapping is imageRef by another name
    for spec in ({**good, "block_device_mapping_v2": _cli_bdm(image)},
                 {**{k: val for k, val in good.items() if k != "imageRef"},
                  "block_device_mapping_v2": _cli_bdm(image)},
                 {**good, "networks": [], "min_count": 1, "max_count": 1,
                  "availability_zone": "nova", "config_drive": "false"}):
        made = compute.call("POST", "/servers", member, json={"server": spec})
        assert made.status_code == 202, (spec, made.text)
        shown = compute.call("GET", f"/servers/{made.json()['server']['id']}",
                             member).json()["server"]
        assert shown["image"]["id"] == image and shown["config_drive"] == ""


# ---- the stock clients -------------------------------------------------------------------
@CLIENT_ON_SQLITE
def test_stock_cli_keypairs_and_server_create(compute: Compute, tmp_path: Path) -> None:
    services = compute.services
    key = ssh_keygen(tmp_path, "cli")
    pub = key.with_suffix(".pub")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return openstack_cli(services, *args)

    done = cli("keypair", "create", "--public-key", str(pub), "clikey", "-f", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["fingerprint"] == md5_fingerprint(pub)
    # the CLI's own generation (it makes the key client-side and imports the public half)
    generated = cli("keypair", "create", "made")
    assert generated.returncode == 0, generated.stderr
    made = cli("keypair", "show", "--public-key", "made")
    assert made.returncode == 0, made.stderr
    assert public_of(generated.stdout, tmp_path) == " ".join(made.stdout.split()[:2])
    listed = json.loads(cli("keypair", "list", "-f", "json").stdout)
    assert sorted(k["Name"] for k in listed) == ["clikey", "made"]
    shown = json.loads(cli("keypair", "show", "clikey", "-f", "json").stdout)
    assert shown["type"] == "ssh" and shown["fingerprint"] == md5_fingerprint(pub)
    refused = cli("keypair", "create", "--public-key", str(key), "private-by-mistake")
    assert refused.returncode != 0 and "keypair.public_key" in refused.stderr
    # (the CLI's --type never reaches the API: openstacksdk 4.22 drops its 'key_type';
    # x509 is refused at the API, test_bad_keypair_input_is_400_naming_the_field)
    assert cli("keypair", "delete", "made").returncode == 0

    init = tmp_path / "init.sh"
    init.write_bytes(b"#!/bin/sh\necho user-data-ran > /tmp/ran\n")
    net = services.cfg.network.provider_name
    boot = cli("server", "create", "--image", "t", "--flavor", "m1.tiny", "--network", net,
               "--key-name", "clikey", "--user-data", str(init), "--config-drive", "true",
               "vm1", "-f", "json")
    assert boot.returncode == 0, boot.stderr
    server = json.loads(cli("server", "show", "vm1", "-f", "json").stdout)
    assert server["key_name"] == "clikey" and server["config_drive"] == "True", server
    encoded = base64.b64encode(init.read_bytes()).decode()
    assert server["OS-EXT-SRV-ATTR:user_data"] == encoded  # an admin's field, from 2.3
    stored = services.db.run_in_transaction(lambda s: [
        (i.key_data, i.user_data) for i in s.scalars(select(Instance))])
    assert stored == [(pub.read_text().strip(), base64.b64encode(init.read_bytes()).decode())]

    unknown = cli("server", "create", "--image", "t", "--flavor", "m1.tiny", "--network", net,
                  "--key-name", "nosuch", "vm2")
    assert unknown.returncode != 0 and "Invalid key_name provided." in unknown.stderr
    big = tmp_path / "big"
    big.write_bytes(os.urandom(50000))
    too_big = cli("server", "create", "--image", "t", "--flavor", "m1.tiny", "--network", net,
                  "--user-data", str(big), "vm3")
    assert too_big.returncode != 0 and "server.user_data" in too_big.stderr
    swap = cli("server", "create", "--image", "t", "--flavor", "m1.tiny", "--network", net,
               "--swap", "1", "vm4")
    assert swap.returncode != 0 and "block_device_mapping_v2" in swap.stderr
    fixed = cli("server", "create", "--image", "t", "--flavor", "m1.tiny", "--nic",
                f"net-id={net},v4-fixed-ip=192.0.2.99", "vm5")
    assert fixed.returncode != 0 and "fixed_ip" in fixed.stderr
    names = [s["Name"] for s in json.loads(cli("server", "list", "-f", "json").stdout)]
    assert names == ["vm1"]
    # the key_pairs quota through the stock CLI: the admin has one key, the limit is 1
    assert cli("quota", "set", "--key-pairs", "1", "admin").returncode == 0
    over = cli("keypair", "create", "--public-key", str(pub), "one-too-many")
    assert over.returncode != 0 and "too many key pairs" in over.stderr, over.stderr


@CLIENT_ON_SQLITE
def test_openstacksdk_generates_a_key_and_boots_with_it(compute: Compute,
                                                        tmp_path: Path) -> None:
    services = compute.services
    conn = openstack.connect(
        auth_url=f"{services.url('identity')}/v3", username="admin", password=ADMIN_PASSWORD,
        project_name="admin", user_domain_id="default", project_domain_id="default",
        region_name="RegionOne", identity_api_version="3", load_yaml_config=False,
        load_envvars=False)
    made = conn.compute.create_keypair(name="sdk")
    assert made.private_key and made.fingerprint and made.type == "ssh"
    assert public_of(made.private_key, tmp_path) == " ".join(made.public_key.split()[:2])
    assert conn.compute.get_keypair("sdk").private_key is None
    image = conn.image.find_image("t")
    flavor = conn.compute.find_flavor("m1.tiny")
    net = conn.network.find_network(services.cfg.network.provider_name)
    user_data = base64.b64encode(b"#cloud-config\n{}\n").decode()
    server = conn.compute.create_server(
        name="sdk-vm", image_id=image.id, flavor_id=flavor.id, networks=[{"uuid": net.id}],
        key_name="sdk", user_data=user_data, config_drive=True)
    got = conn.compute.get_server(server.id)
    assert got.key_name == "sdk" and got.has_config_drive in (True, "True")
    assert got.user_data == user_data  # admin, microversion above 2.3
    with pytest.raises(openstack.exceptions.BadRequestException, match="key_name"):
        conn.compute.create_server(name="no", image_id=image.id, flavor_id=flavor.id,
                                   networks=[{"uuid": net.id}], key_name="missing")
    conn.compute.delete_keypair("sdk")
    assert list(conn.compute.keypairs()) == []
