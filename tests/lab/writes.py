"""A write-judging client of the VIP, run in the switch namespace (the only place
that reaches it): every write it sends goes into a ledger, and at the end it
observes every object it named, for tests/lab/ledger.py's judge.

``python -m tests.lab.writes churn AUTH_URL PASSWORD LEDGER SECONDS IMAGE FLAVOR``
    Until LEDGER.stop exists (or for SECONDS at most), creates, updates and
    deletes objects of six kinds through the VIP, one kind after the other:
    projects and users (identity), networks and
    ports (network), servers and their metadata (compute), images and their
    properties (image). Each write is one JSON line in LEDGER (ledger.Write),
    flushed before the next request. Servers are made with FLAVOR, which no
    hypervisor can hold (the test makes it): they go to ERROR at once, with no
    guest to boot on the lab's two cores, and still are acknowledged creates
    whose rows and metadata must survive; IMAGE is an active image to boot.

``python -m tests.lab.writes observe AUTH_URL PASSWORD LEDGER OUT``
    GETs every object the ledger names and lists every collection, retrying
    each until the API gives a definite answer (200 or 404), and writes OUT:
    ``{"seen": [ledger.Seen...], "listed_names": {kind: [names]}}``.

Plain ``requests`` with short timeouts: a connection to a dead VIP holder must
not stall the client for long, as it would a user; a timeout is an unknown
outcome, never a success.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.lab.ledger import Outcome, Seen, Write, outcome, read_ledger
from tests.lab.vip_client import TIMEOUT, token

LIVE = 2  # objects of a kind being updated at once
KEEP_EVERY = 3  # every third object is never deleted: it must be there at the end
KEEP_MAX = 3  # per kind (servers: the project's RAM quota holds 5 of the test's)


@dataclass(frozen=True)
class Kind:
    """How to write and read one kind of object through its API. ``field`` is the
    judged value's name in the ledger; ``read`` finds it in the object's JSON."""

    name: str
    collection: str  # URL of the collection (list, create)
    field: str
    create: Callable[[str, str], Any]  # (name, value) -> JSON body
    created_id: Callable[[Any], str]
    update: Callable[[str, str, str], tuple[str, str, dict[str, str], Any]]
    # (object URL, field value, name) -> (method, URL, headers, JSON body)
    read: Callable[[Any], str | None]  # the GET body -> the field's value
    listed: Callable[[Any], list[dict[str, Any]]]  # a list page -> its objects
    next_page: Callable[[Any, str], str | None]  # (page, collection URL) -> next URL

    def url(self, ident: str) -> str:
        return f"{self.collection}/{ident}"


def _links_next(key: str) -> Callable[[Any, str], str | None]:
    def find(page: Any, _base: str) -> str | None:
        return next((link["href"] for link in page.get(key) or [] if link.get("rel") == "next"),
                    None)
    return find


def _image_next(page: Any, base: str) -> str | None:
    nxt = page.get("next")
    if not nxt:
        return None
    root = base.split("/v2/", 1)[0]
    return f"{root}{nxt}"


def _no_next(_page: Any, _base: str) -> str | None:
    return None


def kinds(urls: dict[str, str], auth_url: str, parent_network: str, image: str,
          flavor: str) -> list[Kind]:
    identity = auth_url.rstrip("/")
    network = urls["network"].rstrip("/") + "/v2.0"
    compute = urls["compute"].rstrip("/")
    images = urls["image"].rstrip("/") + "/v2/images"
    patch_type = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
    return [
        Kind("project", f"{identity}/projects", "description",
             lambda n, v: {"project": {"name": n, "description": v}},
             lambda b: b["project"]["id"],
             lambda url, v, _n: ("PATCH", url, {}, {"project": {"description": v}}),
             lambda b: b["project"].get("description"), lambda p: p["projects"], _no_next),
        Kind("user", f"{identity}/users", "description",
             lambda n, v: {"user": {"name": n, "description": v}},
             lambda b: b["user"]["id"],
             lambda url, v, _n: ("PATCH", url, {}, {"user": {"description": v}}),
             lambda b: b["user"].get("description"), lambda p: p["users"], _no_next),
        Kind("network", f"{network}/networks", "description",
             lambda n, v: {"network": {"name": n, "description": v}},
             lambda b: b["network"]["id"],
             lambda url, v, _n: ("PUT", url, {}, {"network": {"description": v}}),
             lambda b: b["network"].get("description"), lambda p: p["networks"],
             _links_next("networks_links")),
        Kind("port", f"{network}/ports", "description",
             lambda n, v: {"port": {"name": n, "network_id": parent_network,
                                    "description": v}},
             lambda b: b["port"]["id"],
             lambda url, v, _n: ("PUT", url, {}, {"port": {"description": v}}),
             lambda b: b["port"].get("description"), lambda p: p["ports"],
             _links_next("ports_links")),
        Kind("server", f"{compute}/servers", "metadata.w",
             lambda n, v: {"server": {"name": n, "imageRef": image, "flavorRef": flavor,
                                      "networks": "none", "metadata": {"w": v}}},
             lambda b: b["server"]["id"],
             lambda url, v, _n: ("PUT", f"{url}/metadata/w", {}, {"meta": {"w": v}}),
             lambda b: b["server"].get("metadata", {}).get("w"), lambda p: p["servers"],
             _links_next("servers_links")),
        Kind("image", images, "w_prop",
             lambda n, v: {"name": n, "disk_format": "qcow2", "container_format": "bare",
                           "w_prop": v},
             lambda b: b["id"],
             lambda url, v, _n: ("PATCH", url, patch_type,
                                 [{"op": "add", "path": "/w_prop", "value": v}]),
             lambda b: b.get("w_prop"), lambda p: p["images"], _image_next),
    ]


class Client:
    """One token, plain requests; every answer is a status (0: none came)."""

    def __init__(self, tok: str, timeout: tuple[float, float] = TIMEOUT) -> None:
        self.session = requests.Session()
        self.session.headers["X-Auth-Token"] = tok
        self.timeout = timeout

    def call(self, method: str, url: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        try:
            kwargs: dict[str, Any] = {"headers": headers or {}, "timeout": self.timeout}
            if body is not None:
                if headers and "Content-Type" in headers:
                    kwargs["data"] = json.dumps(body)
                else:
                    kwargs["json"] = body
            r = self.session.request(method, url, **kwargs)
        except requests.RequestException:
            return 0, None
        try:
            return r.status_code, (r.json() if r.content else None)
        except ValueError:
            # a 2xx whose body we cannot read: we do not know what was made
            return (0 if 200 <= r.status_code < 300 else r.status_code), None


@dataclass
class Live:
    kind: Kind
    id: str
    name: str
    keep: bool
    updates_left: int = 2


class Ledger:
    """The JSON-lines file every write goes into, flushed before the next one."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("a")
        self.seq = itertools.count(len(path.read_text().splitlines()) if path.exists() else 0)

    def record(self, kind: str, op: str, name: str, status: int, ident: str | None,
               values: dict[str, str] | None = None) -> None:
        w = Write(seq=next(self.seq), kind=kind, op=op, name=name, status=status, id=ident,
                  values=values or {}, t=time.time())
        self.file.write(w.to_json() + "\n")
        self.file.flush()


def churn(auth_url: str, password: str, path: Path, seconds: float, image: str,
          flavor: str, until: Callable[[], bool] | None = None,
          timeout: tuple[float, float] = TIMEOUT) -> None:
    """Write through ``auth_url``'s catalog into the ledger at ``path`` for ``seconds``
    (or until the ``.stop`` file appears). With ``until``, stop as soon as it holds,
    ``seconds`` being only a ceiling: a test that needs some writes done waits for
    them, not for a time a slow machine might not reach them in. ``timeout``: the
    client's (connect, read) timeouts; a timeout is an unknown outcome."""
    tok, urls = token(auth_url, password)
    client = Client(tok, timeout)
    ledger = Ledger(path)
    tag = uuid.uuid4().hex[:6]
    counter = itertools.count()
    # the ports' network: a write like the others (it must survive too)
    parent_name = f"w{tag}-ports"
    network_url = urls["network"].rstrip("/") + "/v2.0/networks"
    while True:
        status, body = client.call("POST", network_url,
                                   {"network": {"name": parent_name, "description": "v0"}})
        ledger.record("network", "create", parent_name, status,
                      body["network"]["id"] if status == 201 else None, {"description": "v0"})
        if status == 201:
            parent = body["network"]["id"]
            break
        time.sleep(0.5)
    all_kinds = kinds(urls, auth_url, parent, image, flavor)
    live: dict[str, list[Live]] = {k.name: [] for k in all_kinds}
    made: dict[str, int] = {k.name: 0 for k in all_kinds}
    deadline = time.monotonic() + seconds
    stop = path.with_suffix(".stop")
    for kind in itertools.cycle(all_kinds):
        if time.monotonic() >= deadline or stop.exists() or (until is not None and until()):
            break
        objects = live[kind.name]
        value = f"v{next(counter)}"
        if len(objects) < LIVE:
            name = f"w{tag}-{kind.name}-{value}"
            status, body = client.call("POST", kind.collection, kind.create(name, value))
            ident = None
            if outcome(status) is Outcome.ACKNOWLEDGED:
                try:
                    ident = kind.created_id(body)
                except (KeyError, TypeError):
                    status = 0  # acknowledged, but with no id we cannot follow it
            ledger.record(kind.name, "create", name, status, ident, {kind.field: value})
            if ident is not None:
                made[kind.name] += 1
                keep = made[kind.name] % KEEP_EVERY == 1 and made[kind.name] < KEEP_EVERY * KEEP_MAX
                objects.append(Live(kind, ident, name, keep))
        else:
            obj = objects[0]
            if obj.updates_left > 0:
                method, url, headers, body = kind.update(kind.url(obj.id), value, obj.name)
                status, _ = client.call(method, url, body, headers)
                ledger.record(kind.name, "update", obj.name, status, obj.id, {kind.field: value})
                obj.updates_left -= 1
                gone = outcome(status) is Outcome.ABSENT
            elif obj.keep:
                objects.pop(0)  # done with it: it stays
                continue
            else:
                status, _ = client.call("DELETE", kind.url(obj.id))
                ledger.record(kind.name, "delete", obj.name, status, obj.id)
                # an unknown outcome: try again later (a 404 then is judged by the ledger)
                gone = outcome(status) is not Outcome.UNKNOWN
            if gone:
                objects.pop(0)
        if outcome(status) is Outcome.UNKNOWN:
            time.sleep(0.1)


def definite(client: Client, method: str, url: str, deadline: float) -> tuple[int, Any]:
    """An answer that says yes or no (200 or 404), however long the API needs to recover."""
    while True:
        status, body = client.call(method, url)
        if status in (200, 404):
            return status, body
        if time.monotonic() > deadline:
            raise SystemExit(f"no definite answer from {method} {url} (last {status})")
        time.sleep(0.5)


def observe(auth_url: str, password: str, path: Path, out: Path, budget: float = 120.0) -> None:
    writes = read_ledger(path)
    tok, urls = token(auth_url, password)
    client = Client(tok)
    deadline = time.monotonic() + budget
    parent = next(w.id for w in writes if w.kind == "network" and w.op == "create" and w.id)
    # image and flavor do not matter for reading
    by_name = {k.name: k for k in kinds(urls, auth_url, parent, "", "")}
    listed: dict[str, dict[str, str]] = {}  # kind -> id -> name
    for kind in by_name.values():
        ids: dict[str, str] = {}
        url: str | None = kind.collection
        while url:
            status, page = definite(client, "GET", url, deadline)
            if status != 200:
                raise SystemExit(f"listing {url}: {status}")
            ids.update({str(o["id"]): str(o.get("name")) for o in kind.listed(page)})
            url = kind.next_page(page, kind.collection)
        listed[kind.name] = ids
    seen: list[Seen] = []
    for kind_name, ident in sorted({(w.kind, w.id) for w in writes if w.id}):
        kind = by_name[kind_name]
        status, body = definite(client, "GET", kind.url(ident), deadline)
        value = kind.read(body) if status == 200 else None
        seen.append(Seen(kind=kind_name, id=ident, found=status == 200,
                         listed=ident in listed[kind_name],
                         values={kind.field: value} if value is not None else {}))
    out.write_text(json.dumps({
        "seen": [s.to_json() for s in seen],
        "listed_names": {k: sorted(v.values()) for k, v in listed.items()}}) + "\n")


def main(argv: list[str]) -> None:
    if argv[0] == "churn":
        churn(argv[1], argv[2], Path(argv[3]), float(argv[4]), argv[5], argv[6])
    elif argv[0] == "observe":
        observe(argv[1], argv[2], Path(argv[3]), Path(argv[4]))
    else:
        raise SystemExit(f"unknown mode {argv[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
