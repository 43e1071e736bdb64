"""The metadata WSGI app and its lookups: each request is answered for the instance
that holds its source address on the listener's network, or not at all."""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from core.compute.metadata.app import NETWORK_KEY, MetadataApp, for_network
from core.compute.metadata.lookup import (
    CallableLookup,
    JsonFileLookup,
    LookupUnavailable,
    index_by_address,
    write_instances_file,
)
from core.compute.metadata.model import FixedIP, InstanceDescription, Port, Subnet

SUBNET = Subnet(id="s", cidr="10.0.0.0/24", gateway_ip="10.0.0.1")


def inst(network: str, address: str, name: str = "vm") -> InstanceDescription:
    return InstanceDescription(
        uuid=str(uuid.uuid4()), name=name, hostname=name, project_id="p-" + name,
        ports=(Port(id=str(uuid.uuid4()), mac_address="fa:16:3e:00:00:01", network_id=network,
                    fixed_ips=(FixedIP(address, SUBNET),)),))


def call(app: Any, path: str, source: str = "10.0.0.5", network: str | None = "net-1",
         method: str = "GET", headers: dict[str, str] | None = None,
         ) -> tuple[str, dict[str, str], bytes]:
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path,
                               "REMOTE_ADDR": source, "wsgi.input": io.BytesIO(b"")}
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    if network is not None:
        environ[NETWORK_KEY] = network
    got: dict[str, Any] = {}

    def start_response(status: str, hdrs: list[tuple[str, str]]) -> None:
        got["status"], got["headers"] = status, dict(hdrs)

    out = b"".join(app(environ, start_response))
    return got["status"], got["headers"], out


def uuid_of(app: Any, **kw: Any) -> str | None:
    status, _, body = call(app, "/openstack/latest/meta_data.json", **kw)
    return json.loads(body)["uuid"] if status.startswith("200") else status


def test_answers_the_instance_holding_the_source_on_that_network() -> None:
    a, b, c = inst("net-1", "10.0.0.5", "a"), inst("net-1", "10.0.0.6", "b"), \
        inst("net-2", "10.0.0.5", "c")
    index = index_by_address([a, b, c])
    app = MetadataApp(CallableLookup(lambda n, s: index.get((n, s))))
    assert uuid_of(app, source="10.0.0.5", network="net-1") == a.uuid
    assert uuid_of(app, source="10.0.0.6", network="net-1") == b.uuid
    assert uuid_of(app, source="10.0.0.5", network="net-2") == c.uuid
    assert uuid_of(app, source="10.0.0.7", network="net-1").startswith("404")
    assert uuid_of(app, source="10.0.0.6", network="net-2").startswith("404")
    # headers a guest could forge change nothing
    assert uuid_of(app, source="10.0.0.6", network="net-1",
                   headers={"X-Forwarded-For": "10.0.0.5", "X-Instance-ID": a.uuid,
                            "X-Haven-Metadata-Network-Id": "net-2"}) == b.uuid
    # every path needs a known source, the root listing included
    for path in ("/", "/openstack", "/latest/meta-data/"):
        assert call(app, path, source="10.0.0.7")[0].startswith("404")
    assert call(app, "/", network=None)[0].startswith("404")


def test_for_network_marks_requests_whatever_they_carry() -> None:
    a = inst("net-1", "10.0.0.5")
    app = for_network(MetadataApp(CallableLookup(
        lambda n, s: a if (n, s) == ("net-1", "10.0.0.5") else None)), "net-1")
    assert uuid_of(app, network="net-2") == a.uuid


def test_a_lookup_answer_that_does_not_own_the_address_is_not_served() -> None:
    """A buggy or stale lookup answering another instance leaks nothing."""
    other = inst("net-1", "10.0.0.99", "other")
    app = MetadataApp(CallableLookup(lambda n, s: other))
    status, _, body = call(app, "/openstack/latest/meta_data.json", source="10.0.0.5")
    assert status.startswith("404") and other.uuid.encode() not in body
    wrong_net = MetadataApp(CallableLookup(lambda n, s: inst("net-2", "10.0.0.5")))
    assert call(wrong_net, "/openstack/latest/meta_data.json")[0].startswith("404")


def test_methods_head_and_failures() -> None:
    a = inst("net-1", "10.0.0.5")
    app = MetadataApp(CallableLookup(lambda n, s: a))
    for method in ("POST", "PUT", "DELETE"):
        status, headers, _ = call(app, "/openstack/latest/password", method=method)
        assert status.startswith("405") and headers["Allow"] == "GET, HEAD"
    status, headers, body = call(app, "/openstack/latest/meta_data.json", method="HEAD")
    assert status.startswith("200") and body == b"" and int(headers["Content-Length"]) > 0
    assert headers["Content-Type"] == "application/json"
    assert call(app, "/openstack/latest/nope")[0].startswith("404")

    def broken(n: str, s: str) -> InstanceDescription:
        raise ConnectionError("compute API unreachable")

    assert call(MetadataApp(CallableLookup(broken)), "/")[0].startswith("503")


def test_file_lookup_reads_the_agents_file_and_follows_rewrites(tmp_path: Path) -> None:
    path = tmp_path / "instances.json"
    a, b = inst("net-1", "10.0.0.5", "a"), inst("net-1", "10.0.0.6", "b")
    write_instances_file(path, [a, b])
    assert os.stat(path).st_mode & 0o777 == 0o600
    app = MetadataApp(JsonFileLookup(path))
    assert uuid_of(app, source="10.0.0.5") == a.uuid
    # the address moves to a new instance: the next request sees it
    a2 = inst("net-1", "10.0.0.5", "a2")
    write_instances_file(path, [a2, b])
    assert uuid_of(app, source="10.0.0.5") == a2.uuid
    assert uuid_of(app, source="not-an-ip").startswith("404")


def test_file_lookup_serves_no_address_two_instances_claim(tmp_path: Path) -> None:
    path = tmp_path / "instances.json"
    a, b = inst("net-1", "10.0.0.5", "a"), inst("net-1", "10.0.0.5", "b")
    c = inst("net-1", "10.0.0.6", "c")
    write_instances_file(path, [a, b, c])
    app = MetadataApp(JsonFileLookup(path))
    assert uuid_of(app, source="10.0.0.5").startswith("404")
    assert uuid_of(app, source="10.0.0.6") == c.uuid  # the others are still answered


def test_file_lookup_fails_closed_on_a_bad_or_missing_file(tmp_path: Path) -> None:
    """A file that cannot be read is not replaced by its last good copy: the address
    may belong to another tenant by now."""
    path = tmp_path / "instances.json"
    lookup = JsonFileLookup(path)
    with pytest.raises(LookupUnavailable):
        lookup.find("net-1", "10.0.0.5")
    a = inst("net-1", "10.0.0.5")
    write_instances_file(path, [a])
    assert lookup.find("net-1", "10.0.0.5") == a
    path.write_text('{"format": "haven-metadata/1", "instances": [{"uuid": 1}]}')
    with pytest.raises(LookupUnavailable):
        lookup.find("net-1", "10.0.0.5")
    assert call(MetadataApp(lookup), "/openstack")[0].startswith("503")
    path.write_text("{not json")
    with pytest.raises(LookupUnavailable):
        lookup.find("net-1", "10.0.0.5")
    path.unlink()
    with pytest.raises(LookupUnavailable):
        lookup.find("net-1", "10.0.0.5")
