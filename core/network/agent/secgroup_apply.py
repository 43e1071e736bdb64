"""Loading a hypervisor's security group ruleset into the kernel.

The interface the per-hypervisor agent uses (three calls, all idempotent):

* :meth:`NftApplier.apply` ``(host)``: the whole ruleset for the host's ports,
  replacing the previous one in one ``nft -f`` transaction (the kernel swaps it
  atomically: no packet sees half of it). Call it when ports or rules change.
* :meth:`NftApplier.update_members` ``({group_id: addresses})``: a remote group's
  members changed (a port joined or left, elsewhere): only its sets are rewritten,
  in one transaction. Raises :class:`ApplyError` if a set does not exist (the
  loaded ruleset names no such group): call ``apply`` instead.
* :meth:`NftApplier.remove` ``()``: no guest ports left on the host.

Before loading it turns on ``br_netfilter``'s calls into the IP hooks and reads them
back: without them bridged traffic would never reach the ``inet`` table, every rule
would be skipped, and the guests would be open. Where they cannot be turned on,
nothing is loaded and :class:`ApplyError` says why (fail closed: the caller must not
plug a tap for a port whose filter is not in place).

Commands go through ``run`` (argv, stdin) so the agent can run them in another
network namespace (the tests do: ``ip netns exec NS``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence

from core.network.agent.secgroup_nft import TABLE, HostPorts, compile_ruleset, set_update

Runner = Callable[[Sequence[str], str | None], str]
SYSCTLS = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables")


class ApplyError(RuntimeError):
    """The ruleset (or a set update) was not loaded; the previous one is still in force."""


def run_local(argv: Sequence[str], stdin: str | None) -> str:
    """Run a command here; its output, or ApplyError with its error output."""
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ApplyError(f"{argv[0]}: {exc}") from None
    if done.returncode != 0:
        raise ApplyError(f"{' '.join(argv[:3])} failed ({done.returncode}): "
                         f"{done.stderr.strip()[-2000:]}")
    return done.stdout


def in_namespace(netns: str, run: Runner = run_local) -> Runner:
    """A runner that runs each command inside network namespace ``netns``."""
    def wrapped(argv: Sequence[str], stdin: str | None) -> str:
        return run(["ip", "netns", "exec", netns, *argv], stdin)
    return wrapped


class NftApplier:
    """Loads compiled rulesets with ``nft -f -`` (see the module docstring)."""

    def __init__(self, run: Runner = run_local, nft: str = "nft") -> None:
        self.run = run
        self.nft = nft

    def ensure_bridge_netfilter(self) -> None:
        for key in SYSCTLS:
            self.run(["sysctl", "-q", "-w", f"{key}=1"], None)
            value = self.run(["sysctl", "-n", key], None).strip()
            if value != "1":
                raise ApplyError(f"{key} is {value!r}, not 1: bridged traffic would bypass "
                                 "the security groups")

    def apply(self, host: HostPorts) -> None:
        script = compile_ruleset(host)
        self.ensure_bridge_netfilter()
        self.run([self.nft, "-f", "-"], script)

    def update_members(self, members: Mapping[str, Iterable[str]]) -> None:
        if members:
            self.run([self.nft, "-f", "-"], set_update(members))

    def remove(self) -> None:
        """Delete the tables if they are loaded (nothing is written when they are not)."""
        tables = self.run([self.nft, "list", "tables"], None)
        if f"inet {TABLE}" not in tables and f"bridge {TABLE}" not in tables:
            return
        self.run([self.nft, "-f", "-"], f"table inet {TABLE}\ndelete table inet {TABLE}\n"
                 f"table bridge {TABLE}\ndelete table bridge {TABLE}\n")

    def ruleset(self) -> str:
        """The loaded tables as nft lists them (for diagnostics)."""
        return (self.run([self.nft, "list", "table", "inet", TABLE], None)
                + self.run([self.nft, "list", "table", "bridge", TABLE], None))
