"""Read Haven's metadata the way cloud-init does, with cloud-init's own code.

Run by Debian's /usr/bin/python3 (where the cloud-init package lives), never by
Haven's venv, inside the test guest's network namespace:

    cloudinit_reader.py http  <base url>        # the OpenStack datasource's reader
    cloudinit_reader.py drive <iso> <workdir>   # the ConfigDrive datasource's reader

Prints one JSON object: what cloud-init read (or the error it raised).
"""

import base64
import json
import subprocess
import sys

from cloudinit import sources, util
from cloudinit.sources import DataSourceConfigDrive, DataSourceOpenStack
from cloudinit.sources.helpers import ec2, openstack


def text(value):
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    return value


def summary(results, macs):
    md = results["metadata"]
    network = results.get("networkdata")
    return {
        "version": results.get("version"),
        "metadata": {k: v for k, v in md.items() if k != "random_seed"},
        "random_seed_len": len(md.get("random_seed", b"")),
        "ssh_keys": sources.normalize_pubkey_data(md.get("public_keys")),
        "userdata": text(results.get("userdata")),
        "vendordata": results.get("vendordata"),
        "vendordata2": results.get("vendordata2"),
        "networkdata": network,
        "network_config": openstack.convert_net_json(network, known_macs=macs)
        if network else None,
        "ec2": results.get("ec2-metadata"),
    }


def main():
    mode = sys.argv[1]
    macs = json.loads(sys.argv[-1])  # {mac: guest interface name}
    try:
        if mode == "http":
            base = sys.argv[2]
            reader = openstack.MetadataReader(base, timeout=10, retries=0)
            out = {"selected_version": reader._find_working_version()}
            out.update(summary(DataSourceOpenStack.read_metadata_service(
                base, timeout=10, retries=0), macs))
            out["ec2_user_data"] = text(ec2.get_instance_userdata(
                metadata_address=base, timeout=10, retries=0))
        else:
            iso, workdir = sys.argv[2], sys.argv[3]
            # blkid, as cloud-init's find_candidate_devs asks it, on the image itself
            out = {"label_matches": util.find_devs_with("LABEL=config-2", path=iso,
                                                           no_cache=True)}
            subprocess.run(["xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/",
                            workdir], check=True, capture_output=True)
            out.update(summary(DataSourceConfigDrive.read_config_drive(workdir), macs))
    except Exception as exc:  # the caller asserts on which
        out = {"error": type(exc).__name__, "message": str(exc)}
    json.dump(out, sys.stdout, default=repr)


if __name__ == "__main__":
    main()
