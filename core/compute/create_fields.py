"""What a server create may carry, and the checks of the fields beyond the basics.

Nova refuses a key its schema does not know; Haven also refuses every key it
knows but does not honour, so nothing a client asks for is silently dropped (a
``--user-data`` accepted and never delivered is worse than a 400). The lists
here are what Haven honours; everything else in ``server`` (or in the scheduler
hints) is a 400 naming it.

What the stock clients send is honoured in the shapes Haven can keep:

* ``openstack server create --image`` sends ``block_device_mapping_v2`` with
  one entry, the image as a local boot disk: the same as ``imageRef`` and
  accepted as such. Any other block device (volumes, snapshots, blank disks,
  swap) is refused: Haven has no volumes yet.
* ``min_count``/``max_count`` of 1 (Haven creates one server per request).
* ``networks``: ``auto``/``none``/``[]`` (the CLI's "no --network": the one
  network the caller sees, as Nova before 2.37), or one ``{"uuid"}`` or
  ``{"port"}``; ``fixed_ip`` and ``tag`` are refused.
* ``user_data``: base64, at most 65535 characters as sent (Nova's schema limit),
  stored as the base64 text (Nova's column) for the metadata service.
* ``config_drive``: Nova's booleans (``true``, ``"True"``, ``"yes"``, ...).
* ``key_name``: checked against the caller's key pairs by the route
  (:func:`core.compute.keypairs.key_for_server`).
* ``security_groups``: names or ids of the project's groups, for the server's port
  (:mod:`core.compute.server_secgroups`).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from core.common.faults import BadRequest

TOP_KEYS = frozenset({"server", "os:scheduler_hints", "OS-SCH-HNT:scheduler_hints"})
SERVER_KEYS = frozenset({
    "name", "imageRef", "flavorRef", "metadata", "networks", "key_name", "user_data",
    "config_drive", "min_count", "max_count", "block_device_mapping_v2",
    "availability_zone", "OS-DCF:diskConfig", "security_groups",
})
HINT_KEYS = frozenset({"group"})
NETWORK_KEYS = frozenset({"uuid", "port"})
MAX_USER_DATA = 65535  # Nova's schema: maxLength of the base64 text
AVAILABILITY_ZONE = "nova"  # every Haven host's (the server view says so)
TRUE = frozenset({"true", "1", "on", "yes"})
FALSE = frozenset({"false", "0", "off", "no"})

# Why a key Nova knows is refused, where a reason helps the client.
REASONS = {
    "block_device_mapping": "Haven boots from an image only (no volumes yet); use "
                            "imageRef.",
    "adminPass": "Haven does not set guest passwords; use key_name or user_data.",
    "personality": "injected files are not supported; use user_data.",
    "description": "server descriptions are not stored by Haven.",
}


def check_allowed(body: dict[str, Any]) -> None:
    """400 naming the first key of the request Haven does not honour."""
    for key in body:
        if key not in TOP_KEYS:
            raise BadRequest(f"Invalid input for field '{key}': not accepted.")
    spec = body.get("server")
    if isinstance(spec, dict):
        for key in spec:
            if key not in SERVER_KEYS:
                reason = REASONS.get(key, "not supported by Haven.")
                raise BadRequest(f"Invalid input for field 'server.{key}': {reason}")
    for hints_key in ("os:scheduler_hints", "OS-SCH-HNT:scheduler_hints"):
        hints = body.get(hints_key)
        if isinstance(hints, dict):
            for key in hints:
                if key not in HINT_KEYS:
                    raise BadRequest(f"Invalid input for field '{hints_key}.{key}': "
                                     "Haven honours only the 'group' hint.")


def user_data(spec: dict[str, Any]) -> str | None:
    """The request's user data as base64 text (whitespace removed), or None."""
    value = spec.get("user_data")
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest("Invalid input for field 'server.user_data': expected a base64 "
                         "string.")
    if len(value) > MAX_USER_DATA:
        raise BadRequest(f"Invalid input for field 'server.user_data': {len(value)} "
                         f"characters of base64, more than the {MAX_USER_DATA} allowed.")
    text = "".join(value.split())
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("Invalid input for field 'server.user_data': not valid "
                         "base64.") from None
    return text


def config_drive(spec: dict[str, Any]) -> bool:
    """Nova's boolean ``config_drive`` (absent or null: no config drive)."""
    value = spec.get("config_drive")
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE | FALSE:
        return value.lower() in TRUE
    raise BadRequest("Invalid input for field 'server.config_drive': expected a boolean.")


def _boot_index(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return None


def boot_image(spec: dict[str, Any]) -> str:
    """The image to boot: ``imageRef``, or the one image-to-local entry of
    ``block_device_mapping_v2`` the CLI sends (both given: they must agree)."""
    image_ref = spec.get("imageRef")
    if image_ref is not None and not isinstance(image_ref, str):
        raise BadRequest("Invalid input for field 'server.imageRef': expected string.")
    bdms = spec.get("block_device_mapping_v2")
    if bdms is None:
        if not image_ref:
            raise BadRequest("Missing required field 'server.imageRef'.")
        return image_ref
    where = "server.block_device_mapping_v2"
    no_volumes = "Haven boots from one image as a local disk (no volumes yet)."
    if not isinstance(bdms, list) or len(bdms) != 1 or not isinstance(bdms[0], dict):
        raise BadRequest(f"Invalid input for field '{where}': {no_volumes}")
    bdm = bdms[0]
    for key in bdm:
        if key not in ("uuid", "boot_index", "source_type", "destination_type",
                       "delete_on_termination"):
            raise BadRequest(f"Invalid input for field '{where}[0].{key}': {no_volumes}")
    if bdm.get("source_type") != "image":
        raise BadRequest(f"Invalid input for field '{where}[0].source_type': {no_volumes}")
    if bdm.get("destination_type", "local") != "local":
        raise BadRequest(f"Invalid input for field '{where}[0].destination_type': "
                         f"{no_volumes}")
    if _boot_index(bdm.get("boot_index")) != 0:
        raise BadRequest(f"Invalid input for field '{where}[0].boot_index': the image is "
                         "the boot disk (0).")
    if bdm.get("delete_on_termination", True) not in (True, "true", "True", "1", 1):
        raise BadRequest(f"Invalid input for field '{where}[0].delete_on_termination': "
                         "a local disk is always deleted with its server.")
    uuid = bdm.get("uuid")
    if not isinstance(uuid, str) or not uuid:
        raise BadRequest(f"Invalid input for field '{where}[0].uuid': the image's id.")
    if image_ref and image_ref != uuid:
        raise BadRequest(f"Invalid input for field '{where}[0].uuid': not the image of "
                         "'server.imageRef'.")
    return uuid


def networks(spec: dict[str, Any]) -> Any:
    """``networks`` with the CLI's ``[]`` read as ``auto``; 400 for a network entry
    key Haven does not honour (``fixed_ip``, ``tag``)."""
    value = spec.get("networks")
    if value == []:
        return None
    if isinstance(value, list):
        for i, entry in enumerate(value):
            if isinstance(entry, dict):
                for key in entry:
                    if key not in NETWORK_KEYS:
                        raise BadRequest(f"Invalid input for field 'server.networks[{i}]."
                                         f"{key}': not supported by Haven (give 'uuid' or "
                                         "'port').")
    return value


def check_placement_fields(spec: dict[str, Any]) -> None:
    """The fields Haven honours by having one value only: the zone and disk config."""
    zone = spec.get("availability_zone")
    if zone is not None and zone != AVAILABILITY_ZONE:
        raise BadRequest(f"Invalid input for field 'server.availability_zone': Haven has "
                         f"one zone, '{AVAILABILITY_ZONE}'.")
    disk = spec.get("OS-DCF:diskConfig")
    if disk is not None and disk != "MANUAL":
        raise BadRequest("Invalid input for field 'server.OS-DCF:diskConfig': Haven "
                         "supports MANUAL only.")
