"""corosync.conf from a list of nodes: written by ``haven cluster corosync-conf`` on
real nodes and by ``haven lab up`` for the lab's, one generator for both.

The timing: a lost node is declared gone after ``token`` and ``consensus`` (1.2 x
token), and only then is it fenced and are its resources recovered: the token is
most of a failover's floor. ``token_coefficient`` is 0, so the token is the number
written here: corosync's default adds 650 ms per node beyond two (for long rings
where the token takes longer to go round), which on a three-node cluster turned a
1.5 s token into 2.15 s and its consensus into 2.58 s, 1.4 s more per failover
than the operator asked for. Corosync runs with real-time priority, so a busy machine does
not delay its tokens; what a shorter token risks is a node declared lost on a
network hiccup, which costs a needless fence (availability), never a double run
(fencing comes first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

DEFAULT_TOKEN_MS = 3000


class CorosyncNode(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def nodeid(self) -> int: ...

    @property
    def address(self) -> str: ...


def corosync_conf(cluster_name: str, nodes: Sequence[CorosyncNode],
                  token_ms: int = DEFAULT_TOKEN_MS) -> str:
    """corosync.conf for the lab: knet with encryption (the authkey is shared by the
    nodes), votequorum, logs in the node's private /var/log.

    Corosync's parser wants each ``{`` at the end of its line; this writer only
    ever emits ``name {`` lines. Two nodes get ``two_node: 1`` so that one survivor
    keeps quorum, which is how two-node production clusters run (with fencing).
    """
    lines = [
        "# Written by Haven (ha/bootstrap/corosync.py).",
        "totem {",
        "    version: 2",
        f"    cluster_name: {cluster_name}",
        "    transport: knet",
        "    # A lost node is declared gone after ~token + consensus (1.2 x token), then",
        "    # fenced: most of a failover is this wait (ha/bootstrap/corosync.py).",
        f"    token: {token_ms}",
        "    token_coefficient: 0",
        "    crypto_cipher: aes256",
        "    crypto_hash: sha256",
        "}",
        "",
        "nodelist {",
    ]
    for node in nodes:
        lines += [
            "    node {",
            f"        ring0_addr: {node.address}",
            f"        name: {node.name}",
            f"        nodeid: {node.nodeid}",
            "    }",
        ]
    lines += ["}", "", "quorum {", "    provider: corosync_votequorum"]
    if len(nodes) == 2:
        lines.append("    two_node: 1")
    lines += [
        "}",
        "",
        "logging {",
        "    to_logfile: yes",
        "    logfile: /var/log/corosync/corosync.log",
        "    to_syslog: no",
        "    to_stderr: no",
        "    timestamp: on",
        "}",
        "",
    ]
    return "\n".join(lines)
