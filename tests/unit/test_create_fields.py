"""The server create allow-list and field checks (core/compute/create_fields.py), alone."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from core.common.faults import BadRequest
from core.compute import create_fields

IMAGE = "9b2d5a34-0000-4000-8000-000000000001"
CLI_BDM = {"uuid": IMAGE, "boot_index": 0, "source_type": "image",
           "destination_type": "local", "delete_on_termination": True}


def refused(call: Any, *args: Any) -> str:
    with pytest.raises(BadRequest) as info:
        call(*args)
    return info.value.message


def test_every_key_not_honoured_is_named() -> None:
    assert "'server.user_datum'" in refused(create_fields.check_allowed,
                                            {"server": {"user_datum": "x"}})
    assert "'server.personality'" in refused(
        create_fields.check_allowed, {"server": {"personality": []}})
    assert "'os:scheduler_hints.same_host'" in refused(
        create_fields.check_allowed, {"server": {}, "os:scheduler_hints": {"same_host": "a"}})
    assert "'other'" in refused(create_fields.check_allowed, {"server": {}, "other": 1})
    create_fields.check_allowed({"server": {k: None for k in create_fields.SERVER_KEYS},
                                 "os:scheduler_hints": {"group": "g"}})


def test_user_data_is_base64_within_nova_limit() -> None:
    ok = base64.b64encode(b"x" * 49149).decode()  # 65532 characters
    assert create_fields.user_data({"user_data": ok}) == ok
    wrapped = "\n".join(ok[i:i + 76] for i in range(0, 760, 76))
    assert create_fields.user_data({"user_data": wrapped}) == ok[:760]
    assert create_fields.user_data({}) is None
    too_long = base64.b64encode(b"x" * 49152).decode()  # 65536 characters
    for bad in (too_long, "not base64!", "abc", 5):
        assert "'server.user_data'" in refused(create_fields.user_data, {"user_data": bad})


@pytest.mark.parametrize(("value", "expected"), [
    (True, True), (False, False), ("True", True), ("yes", True), ("1", True),
    ("false", False), ("OFF", False), (None, False)])
def test_config_drive_takes_novas_booleans(value: Any, expected: bool) -> None:
    assert create_fields.config_drive({"config_drive": value}) is expected


def test_config_drive_refuses_anything_else() -> None:
    for bad in ("perhaps", 1, [], {}):
        assert "'server.config_drive'" in refused(create_fields.config_drive,
                                                  {"config_drive": bad})


def test_the_clis_image_mapping_is_image_ref() -> None:
    assert create_fields.boot_image({"imageRef": IMAGE}) == IMAGE
    assert create_fields.boot_image({"imageRef": IMAGE, "block_device_mapping_v2": [
        CLI_BDM]}) == IMAGE
    assert create_fields.boot_image({"imageRef": "", "block_device_mapping_v2": [
        {**CLI_BDM, "boot_index": "0"}]}) == IMAGE
    assert "'server.imageRef'" in refused(create_fields.boot_image, {})
    for bdms, named in (
            ([{**CLI_BDM, "source_type": "volume"}], "[0].source_type"),
            ([{**CLI_BDM, "destination_type": "volume"}], "[0].destination_type"),
            ([{**CLI_BDM, "boot_index": 1}], "[0].boot_index"),
            ([{**CLI_BDM, "delete_on_termination": False}], "[0].delete_on_termination"),
            ([{**CLI_BDM, "guest_format": "swap"}], "[0].guest_format"),
            ([{**CLI_BDM, "uuid": "other"}], "[0].uuid"),
            ([CLI_BDM, CLI_BDM], "block_device_mapping_v2'"),
            ([], "block_device_mapping_v2'")):
        message = refused(create_fields.boot_image,
                          {"imageRef": IMAGE, "block_device_mapping_v2": bdms})
        assert named in message, (bdms, message)


def test_networks_entries_carry_only_what_haven_honours() -> None:
    assert create_fields.networks({"networks": []}) is None
    assert create_fields.networks({"networks": "auto"}) == "auto"
    assert create_fields.networks({"networks": [{"uuid": "n"}]}) == [{"uuid": "n"}]
    for key in ("fixed_ip", "tag"):
        assert f"'server.networks[0].{key}'" in refused(
            create_fields.networks, {"networks": [{"uuid": "n", key: "x"}]})
