"""Configuration loading: defaults, strictness, and messages that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.common.config import ConfigError, HavenConfig, defaults_yaml, load_config
from ha.cli import main


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "haven.yaml"
    path.write_text(text)
    return path


def test_no_file_means_documented_defaults() -> None:
    cfg = load_config()
    assert cfg == HavenConfig()
    assert cfg.identity.bcrypt_cost == 12
    assert cfg.database_url.startswith("sqlite:///")


def test_file_values_and_overrides_apply(tmp_path: Path) -> None:
    path = write(tmp_path, "identity:\n  token_expiration: 7200\nlog:\n  level: DEBUG\n")
    cfg = load_config(path, {"identity.listen": "0.0.0.0:15000"})
    assert cfg.identity.token_expiration == 7200
    assert cfg.identity.listen == "0.0.0.0:15000"
    assert cfg.log.level == "DEBUG"


@pytest.mark.parametrize(("text", "message"), [
    ("identity:\n  token_expiry: 10\n", "identity.token_expiry: unknown setting"),
    ("colour: blue\n", "colour: unknown setting"),
    ("identity:\n  token_expiration: soon\n", "identity.token_expiration: must be an integer"),
    ("identity:\n  token_expiration: 5\n", "identity.token_expiration: must be between"),
    ("identity:\n  bcrypt_cost: 4\n", "identity.bcrypt_cost: must be between 12"),
    ("identity:\n  listen: nowhere\n", "identity.listen: must be HOST:PORT"),
    ("database:\n  url: postgres://x\n", "database.url: must be a sqlite: or mysql+pymysql:"),
    ("bus:\n  driver: kafka\n", "bus.driver: must be one of local, amqp"),
    ("bus:\n  urls: amqp://x\n", "bus.urls: must be a list"),
    ("identity: 3\n", "identity: must be a mapping"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("identity: [\n", "not valid YAML"),
    ("log:\n  level: true\n", "log.level: must be"),
])
def test_bad_config_is_refused_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("+", r"\+")):
        load_config(write(tmp_path, text))


def test_defaults_reference_parses_back_to_defaults() -> None:
    text = defaults_yaml()
    assert "# Token lifetime in seconds." in text
    assert load_config(overrides=None) == load_config(
        overrides={k: v for k, v in yaml.safe_load(text).items()})


def test_cli_reports_bad_config_with_exit_2(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "identity:\n  tokn: 1\n")
    assert main(["config", "check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "identity.tokn: unknown setting" in err and "Traceback" not in err
    assert main(["config", "check", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert main(["config", "check", "--set", "nonsense"]) == 2
