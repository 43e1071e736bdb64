"""The ``network.segments`` section: ranges parsed and checked, the MTU per type."""

from __future__ import annotations

import re

import pytest

from core.common.config import ConfigError, SegmentsConfig, load_config
from core.network.segments import parse


def test_defaults_are_neutrons_with_devstacks_vni_range() -> None:
    policy = parse(load_config().network.segments)
    assert policy.tenant_type == "vxlan" and policy.vni_ranges == ((1, 1000),)
    assert policy.flat_networks is None and dict(policy.vlan_ranges) == {}
    assert (policy.mtu("vxlan"), policy.mtu("vlan"), policy.mtu("flat")) == (1450, 1500, 1500)


def test_ranges_per_physical_network_and_the_ipv6_overhead() -> None:
    policy = parse(SegmentsConfig(tenant_network_type="vlan", network_vlan_ranges=[
        "physnet1:100:199", "physnet1:300:300", "physnet2"], flat_networks=["provider"],
        global_physnet_mtu=9000, overlay_ip_version=6))
    assert dict(policy.vlan_ranges) == {"physnet1": ((100, 199), (300, 300)), "physnet2": ()}
    assert policy.flat_networks == frozenset({"provider"})
    assert (policy.mtu("vxlan"), policy.mtu("vlan")) == (8930, 9000)


@pytest.mark.parametrize(("settings", "key"), [
    ({"vni_ranges": ["10"]}, "vni_ranges[0]"),
    ({"vni_ranges": ["1:1000", "5:1"]}, "vni_ranges[1]"),
    ({"vni_ranges": ["0:10"]}, "vni_ranges[0]"),
    ({"vni_ranges": [f"1:{2**24}"]}, "vni_ranges[0]"),
    ({"network_vlan_ranges": ["physnet1:1:4095"]}, "network_vlan_ranges[0]"),
    ({"network_vlan_ranges": [":1:10"]}, "network_vlan_ranges[0]"),
    ({"tenant_network_type": "vlan"}, "tenant_network_type"),
    ({"vni_ranges": []}, "tenant_network_type"),
])
def test_a_bad_range_is_refused_naming_its_key(settings: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"network.segments.{key}:")):
        parse(SegmentsConfig(**settings))  # type: ignore[arg-type]


@pytest.mark.parametrize(("key", "value"), [("overlay_ip_version", 5),
                                            ("tenant_network_type", "gre"),
                                            ("global_physnet_mtu", 100)])
def test_the_config_file_refuses_bad_values(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"network.segments.{key}:")):
        load_config(overrides={f"network.segments.{key}": value})


def test_the_datapath_section_becomes_the_hosts_config() -> None:
    from core.network.agent.linuxbridge import host_config

    cfg = load_config(overrides={"network.datapath.local_ip": "198.51.100.7",
                                 "network.datapath.physical_interface_mappings": [
                                     "provider:eth1", "physnet1:bond0"]})
    host = host_config(cfg.network.datapath)
    assert host.local_vtep == "198.51.100.7"
    assert dict(host.physical_interfaces) == {"provider": "eth1", "physnet1": "bond0"}
    assert host_config(load_config().network.datapath).local_vtep is None


@pytest.mark.parametrize(("key", "value"), [
    ("local_ip", "not-an-address"),
    ("physical_interface_mappings", ["eth1"]),
    ("physical_interface_mappings", ["p:eth1", "p:eth2"]),
])
def test_a_bad_datapath_entry_is_refused(key: str, value: object) -> None:
    from core.network.agent.linuxbridge import host_config

    with pytest.raises(ConfigError, match=re.escape(f"network.datapath.{key}")):
        host_config(load_config(overrides={f"network.datapath.{key}": value}).network.datapath)
