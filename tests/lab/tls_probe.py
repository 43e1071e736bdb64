"""What a lab client sees of the cluster's transport, run in the switch namespace.

``python -m tests.lab.tls_probe CLOUDS_YAML VIP PORT...`` prints one JSON object:
the catalog's URLs (fetched over https, verified with clouds.yaml's cacert), and
for each API port what a plain-http request and an https request that does not
trust the cluster CA got (``"answered"`` or the error class).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import requests
import yaml

SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"


def attempt(url: str, verify: str | bool) -> str:
    try:
        requests.get(url, verify=verify, timeout=10)
    except requests.RequestException as exc:
        return type(exc).__name__
    return "answered"


def main(clouds_yaml: str, vip: str, ports: list[str]) -> dict[str, Any]:
    with open(clouds_yaml) as handle:
        cloud = yaml.safe_load(handle)["clouds"]["haven-lab"]
    auth, ca = cloud["auth"], cloud["cacert"]
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": auth["username"], "domain": {"name": "Default"}, "password": auth["password"]}}},
        "scope": {"project": {"name": auth["project_name"], "domain": {"name": "Default"}}}}}
    resp = requests.post(f"{auth['auth_url']}/auth/tokens", json=body, verify=ca, timeout=30)
    resp.raise_for_status()
    urls = [ep["url"] for svc in resp.json()["token"]["catalog"] for ep in svc["endpoints"]]
    return {"catalog": urls,
            "plain_http": {p: attempt(f"http://{vip}:{p}/", False) for p in ports},
            "untrusted_https": {p: attempt(f"https://{vip}:{p}/", SYSTEM_CAS) for p in ports}}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], sys.argv[3:])))
