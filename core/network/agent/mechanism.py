"""The data-path driver a hypervisor's agent uses, from ``network.datapath.mechanism``.

Both mechanisms read the same section (``local_ip``, ``physical_interface_mappings``)
and take the same :class:`~core.network.agent.driver.HostState`; a deployment picks
one per host, and all hosts of a deployment must pick the same (a Linux bridge VXLAN
device and an OVS VXLAN port do interoperate on the wire, but that is not tested).
"""

from __future__ import annotations

from pathlib import Path

from core.common.config import DataPathConfig
from core.network.agent.driver import DataPathDriver
from core.network.agent.iproute import LinuxBridgeDriver
from core.network.agent.linuxbridge import host_config
from core.network.agent.openvswitch import OvsHostConfig
from core.network.agent.ovsctl import OpenVSwitchDriver

SYS_MODULE = Path("/sys/module/openvswitch")


def ovs_datapath_type(configured: str, sys_module: Path = SYS_MODULE) -> str:
    """``auto`` means the kernel datapath where its module is loaded, else userspace
    (``netdev``): a kernel bridge that vswitchd cannot open would forward nothing."""
    if configured != "auto":
        return configured
    return "system" if sys_module.is_dir() else "netdev"


def ovs_host_config(cfg: DataPathConfig, sys_module: Path = SYS_MODULE) -> OvsHostConfig:
    host = host_config(cfg)  # the same checks of local_ip and the mappings
    return OvsHostConfig(host.local_vtep, host.physical_interfaces,
                         ovs_datapath_type(cfg.ovs_datapath_type, sys_module))


def build_driver(cfg: DataPathConfig) -> DataPathDriver:
    """The configured mechanism's driver, on this host's default tools."""
    if cfg.mechanism == "openvswitch":
        return OpenVSwitchDriver(ovs_host_config(cfg))
    return LinuxBridgeDriver(host_config(cfg))
