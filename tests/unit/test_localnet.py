"""The all-in-one's data-path settings: the provider network on the local veth unless the
operator mapped it to an uplink (core/network/localnet.py)."""

from __future__ import annotations

import pytest

from core.common.config import ConfigError, DataPathConfig
from core.network.localnet import (
    LOOPBACK_VTEP,
    OUTSIDE_PEER,
    datapath_config,
    operator_uplink,
)
from core.network.networks import PROVIDER_PHYSNET


def test_without_an_uplink_the_provider_network_is_on_the_local_veth() -> None:
    cfg = datapath_config(DataPathConfig())
    assert operator_uplink(DataPathConfig()) is None
    assert cfg.physical_interface_mappings == [f"{PROVIDER_PHYSNET}:{OUTSIDE_PEER}"]
    assert (cfg.mechanism, cfg.local_ip) == ("linuxbridge", LOOPBACK_VTEP)


def test_an_operators_uplink_and_vtep_are_kept_as_they_are() -> None:
    given = DataPathConfig(local_ip="10.9.0.5", physical_interface_mappings=[
        "other:eth2", f"{PROVIDER_PHYSNET}:eth1"])
    cfg = datapath_config(given)
    assert operator_uplink(given) == "eth1"
    assert cfg.physical_interface_mappings == given.physical_interface_mappings
    assert cfg.local_ip == "10.9.0.5"


def test_a_malformed_mapping_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="physical_interface_mappings\\[0\\]"):
        datapath_config(DataPathConfig(physical_interface_mappings=["eth1"]))
