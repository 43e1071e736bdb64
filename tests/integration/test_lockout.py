"""Password lockout through the real identity API: per user (Keystone's
security_compliance) and per client address, with the clock injected (no sleeps).
The failure counts live in the database; concurrent failures are all counted,
also on a real MariaDB."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests
from sqlalchemy import select

from core.common.config import HavenConfig
from core.common.db import Database
from core.common.server import AppServers, Listener
from core.identity.lockout import (
    Lockout,
    LockoutRules,
    client_address,
    record_failure,
    user_subject,
)
from core.identity.models import AuthFailure, User
from tests.conftest import ADMIN_PASSWORD


class Clock:
    """The time the lockout reads; tests move it forward."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Keystone:
    url: str
    clock: Clock
    admin: str

    def login(self, user: str, password: str, forwarded_for: str | None = None
              ) -> requests.Response:
        headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
        return requests.post(f"{self.url}/v3/auth/tokens", timeout=30, headers=headers, json={
            "auth": {"identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"id": "default"}, "password": password}}}}})

    def user(self, name: str, password: str = "right-pw") -> str:
        resp = requests.post(f"{self.url}/v3/users", timeout=30,
                             headers={"X-Auth-Token": self.admin},
                             json={"user": {"name": name, "password": password}})
        assert resp.status_code == 201, resp.text
        return str(resp.json()["user"]["id"])


def start(cfg: HavenConfig, db: Database, **identity: object) -> Iterator[Keystone]:
    from core.identity.app import create_app
    from core.identity.bootstrap import bootstrap

    for key, value in identity.items():
        setattr(cfg.identity, key, value)
    bootstrap(cfg, db, ADMIN_PASSWORD)
    clock = Clock()
    servers = AppServers([Listener("identity", cfg.identity.listen,
                                   create_app(cfg, db, clock))], threads=8)
    servers.start()
    url = f"http://{cfg.identity.listen}"
    ks = Keystone(url, clock, "")
    resp = ks.login("admin", ADMIN_PASSWORD)
    assert resp.status_code == 201, resp.text
    scoped = requests.post(f"{url}/v3/auth/tokens", timeout=30, json={"auth": {
        "identity": {"methods": ["token"], "token": {"id": resp.headers["X-Subject-Token"]}},
        "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}})
    ks.admin = scoped.headers["X-Subject-Token"]
    yield ks
    servers.stop()


@pytest.fixture
def keystone(haven_cfg: HavenConfig, database: Database) -> Iterator[Keystone]:
    """Lock a user after 3 failures for 600 s; addresses are limited far above that."""
    yield from start(haven_cfg, database, lockout_failure_attempts=3, lockout_duration=600,
                     source_failure_attempts=50, source_lockout_duration=300)


@pytest.fixture
def sprayed(haven_cfg: HavenConfig, database: Database) -> Iterator[Keystone]:
    """Refuse an address after 3 failures for 300 s; one proxy (loopback) is trusted, so
    tests can speak from other addresses through X-Forwarded-For."""
    yield from start(haven_cfg, database, lockout_failure_attempts=10, lockout_duration=600,
                     source_failure_attempts=3, source_lockout_duration=300,
                     trusted_proxies=["127.0.0.1"])


def locked_message(user_id: str) -> str:
    return f"The account is locked for user: {user_id}."


def test_user_is_locked_after_n_failures_until_the_duration_passes(keystone: Keystone) -> None:
    """Bug: wrong passwords could be tried without limit."""
    uid = keystone.user("alice")
    for _ in range(3):
        wrong = keystone.login("alice", "wrong")
        assert wrong.status_code == 401
        assert "locked" not in wrong.text
    right = keystone.login("alice", "right-pw")
    assert right.status_code == 401, right.text
    assert right.json()["error"]["message"] == locked_message(uid)
    keystone.clock.now += 599
    assert keystone.login("alice", "right-pw").status_code == 401
    keystone.clock.now += 2
    assert keystone.login("alice", "right-pw").status_code == 201
    # the lock is over, and so is the count: one more failure does not lock again
    assert keystone.login("alice", "wrong").status_code == 401
    assert keystone.login("alice", "right-pw").status_code == 201


def test_success_resets_the_count(keystone: Keystone) -> None:
    keystone.user("bob")
    for _ in range(2):
        assert keystone.login("bob", "wrong").status_code == 401
        assert keystone.login("bob", "wrong").status_code == 401
        assert keystone.login("bob", "right-pw").status_code == 201


def test_admin_unlocks_by_enabling_the_user(keystone: Keystone) -> None:
    uid = keystone.user("carol")
    for _ in range(3):
        assert keystone.login("carol", "wrong").status_code == 401
    assert keystone.login("carol", "right-pw").json()["error"]["message"] == locked_message(uid)
    unlock = requests.patch(f"{keystone.url}/v3/users/{uid}", timeout=30,
                            headers={"X-Auth-Token": keystone.admin},
                            json={"user": {"enabled": True}})
    assert unlock.status_code == 200, unlock.text
    assert keystone.login("carol", "right-pw").status_code == 201


def test_wrong_original_passwords_count_too(keystone: Keystone) -> None:
    """Changing a password checks the original one: with a stolen token, that check
    must not be a way around the lockout."""
    uid = keystone.user("erin")
    token = keystone.login("erin", "right-pw").headers["X-Subject-Token"]
    for _ in range(3):
        change = requests.post(f"{keystone.url}/v3/users/{uid}/password", timeout=30,
                               headers={"X-Auth-Token": token},
                               json={"user": {"original_password": "guess",
                                              "password": "new-pw"}})
        assert change.status_code == 401, change.text
    locked = keystone.login("erin", "right-pw")
    assert locked.json()["error"]["message"] == locked_message(uid)


def test_the_service_user_is_never_locked(keystone: Keystone, haven_cfg: HavenConfig) -> None:
    """Locking the service user would stop every service: it is exempt, as Keystone's
    ignore_lockout_failure_attempts option makes service users."""
    name = haven_cfg.service_user.name
    for _ in range(3):
        assert keystone.login(name, "wrong").status_code == 401
    assert keystone.login(name, haven_cfg.service_password()).status_code == 201


def test_an_address_that_sprays_passwords_is_refused(sprayed: Keystone) -> None:
    """Bug: one address could try a password on every user (never reaching any user's
    limit). After 3 failures from it, for any users, it gets 429 with Retry-After."""
    sprayed.user("dave")
    for name in ("dave", "nobody", "admin"):
        assert sprayed.login(name, "guess", forwarded_for="198.51.100.7").status_code == 401
    refused = sprayed.login("dave", "right-pw", forwarded_for="198.51.100.7")
    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"] == "300"
    # another address is not affected, and neither is the user
    assert sprayed.login("dave", "right-pw", forwarded_for="198.51.100.8").status_code == 201
    sprayed.clock.now += 120
    again = sprayed.login("admin", ADMIN_PASSWORD, forwarded_for="198.51.100.7")
    assert again.status_code == 429 and again.headers["Retry-After"] == "180"
    sprayed.clock.now += 181
    assert sprayed.login("dave", "right-pw", forwarded_for="198.51.100.7").status_code == 201


def test_forwarded_for_is_believed_only_from_a_trusted_proxy() -> None:
    forged = {"REMOTE_ADDR": "203.0.113.9", "HTTP_X_FORWARDED_FOR": "198.51.100.7"}
    assert client_address(forged, []) == "203.0.113.9"
    assert client_address(forged, ["10.0.0.1"]) == "203.0.113.9"
    proxied = {"REMOTE_ADDR": "10.0.0.1",
               "HTTP_X_FORWARDED_FOR": "1.2.3.4, 198.51.100.7"}  # the client wrote 1.2.3.4
    assert client_address(proxied, ["10.0.0.1"]) == "198.51.100.7"
    assert client_address({"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "junk"},
                          ["10.0.0.1"]) == "10.0.0.1"


def test_concurrent_failures_are_all_counted(database: Database) -> None:
    """Every API node and thread increments one row: no failure may be lost (a
    read-modify-write would lose them under concurrency, as on MariaDB here)."""
    subject = user_subject("racer")
    now = 1_800_000_000.0

    def fail(_: int) -> int:
        return database.run_in_transaction(lambda s: record_failure(s, subject, now, 600))

    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(fail, range(40)))
    assert sorted(counts) == list(range(1, 41))  # each failure saw its own count
    with database.session() as s:
        row = s.get(AuthFailure, subject)
        assert row is not None and row.count == 40
    # a failure after a quiet period starts the count again
    assert database.run_in_transaction(
        lambda s: record_failure(s, subject, now + 601, 600)) == 1


def test_concurrent_wrong_passwords_count_for_user_and_address(database: Database) -> None:
    """What the token API calls on each wrong password, from many threads at once."""
    rules = LockoutRules(user_attempts=100, user_duration=600, source_attempts=100,
                         source_duration=300, exempt_user_names=frozenset())
    locks = Lockout(database, rules, Clock())
    user = User(id="u-racer", name="racer", domain_id="default")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: locks.failed("198.51.100.9", user), range(24)))
    with database.session() as s:
        counts = {row.subject: row.count for row in s.scalars(select(AuthFailure))}
    assert counts == {user_subject("u-racer"): 24, "source:198.51.100.9": 24}
