#!/bin/bash
# Install what Haven needs on a Debian 12 host, idempotently and quickly the second time.
#
#   appliance/setup.sh run    runtime: Debian packages + .venv with Haven and the stock
#                             `openstack` client the README's examples use
#   appliance/setup.sh test   also what the test suite needs (MariaDB server, test tools)
#
# HAVEN_SETUP_AGENTS=no leaves the machine-wide OCF and alert wrappers alone (the
# README's acceptance test runs `make run` in a throwaway copy of the checkout, which
# must not repoint them at itself).
#
# Debian packages are installed only when one is missing (apt-get update costs
# time); the virtual environment is rebuilt only when pyproject.toml or
# constraints.txt changed since the last install (a stamp file records their hash).
set -euo pipefail

MODE="${1:-run}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HAVEN_VENV:-$ROOT/.venv}"
PYTHON=/usr/bin/python3   # Debian's Python: python3-rbd and friends live there

RUN_PACKAGES=(python3 python3-venv python3-dev gcc make pkg-config libvirt-dev
  libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils busybox-static cpio)
RUN_PACKAGES+=(syslinux syslinux-common mtools dosfstools)
# xorriso: the guests' config drive (an ISO9660 image labelled config-2)
RUN_PACKAGES+=(xorriso)
# nftables: security groups on each hypervisor (core/network/agent/secgroup_nft.py) and
# a router's NAT table; iputils-arping: the router's gratuitous ARP (core/network/routerns);
# conntrack: deleting the tracked connections a removed rule no longer admits
# (core/network/agent/secgroup_conntrack.py)
RUN_PACKAGES+=(nftables iputils-arping conntrack)
# dnsmasq-base: each hypervisor's DHCP for its own ports (core/network/agent/dhcp.py); not
# `dnsmasq`, whose package ships and starts a system-wide DNS/DHCP service
RUN_PACKAGES+=(dnsmasq-base)
# dropbear-bin: the tiny guest's SSH server (images/tiny copies it and its libraries in)
RUN_PACKAGES+=(dropbear-bin)
# openvswitch-switch: the openvswitch data-path mechanism (core/network/agent/ovsctl.py);
# its postinst only asks invoke-rc.d to start the service, which policy-rc.d refuses here
# (no init system), and it changes no interface: the tests run their own ovsdb-server and
# ovs-vswitchd per namespace
RUN_PACKAGES+=(openvswitch-switch)
# galera-4, rsync and stunnel4: the lab's Galera cluster and its state transfers (over TLS)
TEST_PACKAGES=(mariadb-server mariadb-client galera-4 rsync stunnel4 rabbitmq-server pacemaker corosync
  pcs crmsh resource-agents fence-agents pacemaker-cli-utils libxml2-utils)
# cloud-init: the metadata tests drive its OpenStack datasource's readers (its services
# never start here: there is no init system, and policy-rc.d below refuses them)
TEST_PACKAGES+=(cloud-init)
# an SSH client into the tiny guest in its tests
TEST_PACKAGES+=(openssh-client)

case "$MODE" in
  run) PACKAGES=("${RUN_PACKAGES[@]}"); EXTRAS="[client]" ;;
  test) PACKAGES=("${RUN_PACKAGES[@]}" "${TEST_PACKAGES[@]}"); EXTRAS="[client,test]" ;;
  *) echo "usage: $0 run|test" >&2; exit 2 ;;
esac

if [ "$(id -u)" != 0 ]; then
  echo "haven setup: run as root (it installs Debian packages)" >&2
  exit 2
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "haven setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # No init system here: keep package scripts from starting services; Haven starts its own.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# cloud-init is installed for the tests to run its code, never to configure this
# machine: where it could start at boot (a systemd machine, e.g. a Vagrant node), its
# documented off switch keeps it from doing anything. Containers without systemd
# never start it (no init system; policy-rc.d refuses package scripts).
if [ "$MODE" = test ] && [ -d /run/systemd/system ] && [ -d /etc/cloud ] &&
   [ ! -e /etc/cloud/cloud-init.disabled ]; then
  : > /etc/cloud/cloud-init.disabled
fi

# install_wrappers DIR PYTHON_FLAGS AGENT...: a small script DIR/<agent's name> per
# agent that runs it with the venv's Python (rewritten only when it changed).
install_wrappers() {
  local dir="$1" flags="$2" agent name wrapper
  shift 2
  mkdir -p "$dir"
  for agent in "$@"; do
    name="$(basename "$agent")"
    wrapper="#!/bin/sh
exec \"$VENV/bin/python\" $flags\"$agent\" \"\$@\""
    if [ "$(cat "$dir/$name" 2>/dev/null)" != "$wrapper" ]; then
      printf '%s\n' "$wrapper" > "$dir/$name"
      chmod 755 "$dir/$name"
    fi
  done
}

if [ "${HAVEN_SETUP_AGENTS:-yes}" != no ]; then
  # Haven's OCF agents, as ocf:haven:<name> (they import Haven's own modules).
  install_wrappers /usr/lib/ocf/resource.d/haven "" "$ROOT"/agents/ocf/haven-*
  # Haven's Pacemaker alert agents (the evacuator's wake-up), loaded by `haven cluster
  # bootstrap` with `pcs alert create path=...`. -I -S: started on every node at every
  # cluster event, so no site-packages to scan (they need only the standard library).
  install_wrappers /usr/lib/haven/alerts "-I -S " "$ROOT"/agents/alert/haven-*
fi

stamp="$VENV/.haven-stamp"
want="$MODE $(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -c1-16)"
have="$(cat "$stamp" 2>/dev/null || true)"
# A test install also satisfies run; a run install does not satisfy test.
if [ "$have" = "$want" ] || { [ "$MODE" = run ] && [ "${have/#test/run}" = "$want" ]; }; then
  exit 0
fi
echo "haven setup: building $VENV"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -c "$ROOT/constraints.txt" \
  -e "$ROOT$EXTRAS" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
echo "$want" > "$stamp"
