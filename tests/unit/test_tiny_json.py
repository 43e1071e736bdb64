"""The tiny guest's JSON reader (images/tiny/guest/json.awk) agrees with Python's json.

The guest has no Python: it reads meta_data.json with busybox awk. Each document here is run
through that very script with busybox's awk and compared line by line with a flattening of
``json.loads`` of the same text; invalid documents must fail (status 1), never half-parse
silently.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "images" / "tiny" / "guest" / "json.awk"
BUSYBOX = Path("/bin/busybox")

pytestmark = pytest.mark.skipif(not BUSYBOX.exists(), reason="needs busybox (busybox-static)")


def awk(text: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(BUSYBOX), "awk", "-f", str(SCRIPT)],
        input=text.encode(), capture_output=True, timeout=30, check=False,
    )  # fmt: skip


def one_line(text: str) -> str:
    """json.awk's rule: a control character becomes a space."""
    return "".join(" " if ord(ch) < 32 else ch for ch in text)


def flatten(value: object, path: str = "") -> list[str]:
    """What json.awk promises, computed from Python's parse."""
    if isinstance(value, dict):
        return [
            line
            for key, item in value.items()
            for line in flatten(item, one_line(key) if not path else f"{path}/{one_line(key)}")
        ]
    if isinstance(value, list):
        return [
            line
            for index, item in enumerate(value)
            for line in flatten(item, str(index) if not path else f"{path}/{index}")
        ]
    if isinstance(value, str):
        return [f"{path}\t{one_line(value)}"]
    return [f"{path}\t{json.dumps(value)}"]


NOVA_META_DATA = {
    "uuid": "3f1c6a2e-9b7d-4c1e-8f55-0a6b2d4e7c91",
    "meta": {"role": "web", "empty": ""},
    "public_keys": {"mykey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB3x tester@haven"},
    "keys": [{"name": "mykey", "type": "ssh", "data": "ssh-ed25519 AAAA tester@haven\n"}],
    "hostname": "vm1.novalocal",
    "name": "vm1",
    "launch_index": 0,
    "availability_zone": "nova",
    "random_seed": "q0Yw" * 128,
    "project_id": "6f2d0d4b8a1e4b0c9d3e2f1a0b9c8d7e",
    "devices": [],
    "dedicated_cpus": [],
}

DOCUMENTS = [
    json.dumps(NOVA_META_DATA),
    json.dumps(NOVA_META_DATA, indent=4),
    json.dumps(NOVA_META_DATA, separators=(",", ":")),
    # Escapes Python writes (ensure_ascii: \\uXXXX incl. a surrogate pair), and raw UTF-8.
    json.dumps({"s": 'caf\u00e9 \u2713 \U0001f600 "q" \\ / \t tab\nnl \x01'}),
    json.dumps({"s": "caf\u00e9 \u2713 \U0001f600"}, ensure_ascii=False),
    '{"esc": "a\\/b \\b\\f\\r \\u0041\\u00DF"}',
    json.dumps(
        {
            "nums": [0, -1, 3.25, -0.5e-3, 1e21, 12345678901234567890],
            "lit": [True, False, None],
            "deep": [[[{"k": [1, {"z": "end"}]}]]],
        }
    ),
    json.dumps({"key with\ttab and/slash": "v", "": "empty key"}),
    json.dumps([]),
    json.dumps({}),
    json.dumps("just a string"),
    json.dumps(42),
]


@pytest.mark.parametrize("text", DOCUMENTS, ids=range(len(DOCUMENTS)))
def test_flattening_matches_python(text: str) -> None:
    result = awk(text)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().split("\n")[:-1] if result.stdout else []
    assert lines == flatten(json.loads(text))


INVALID = [
    "",
    '{"a": 1',
    '{"a": [1, 2}',
    '{"a" 1}',
    "{'a': 1}",
    '{"a": 1} trailing',
    '{"a": "unterminated}',
    '{"a": "bad \\x escape"}',
    '{"a": "raw\ncontrol"}',
    '{"a": tru}',
    '{"a": 01}',
    '{"a": 1,}',
]


@pytest.mark.parametrize("text", INVALID, ids=range(len(INVALID)))
def test_invalid_json_fails(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)  # the cases are invalid for Python too
    result = awk(text)
    assert result.returncode == 1
    assert result.stderr.decode().startswith("json: ")


def test_unpaired_surrogates_become_replacement_characters() -> None:
    result = awk('{"a": "\\ud83d alone \\udc00 \\ud83d\\u0041 \\ud83d\\ude00"}')
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "a\t\ufffd alone \ufffd \ufffdA \U0001f600\n"
