"""Every evacuation scenario folder, diffed against its reviewed log; and the
runner's own rules (a missing expectation fails, ``--write`` writes it, a broken
invariant fails even when the log matches)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ha.evacuator import scenarios
from ha.evacuator.scenarios import SCENARIOS, ScenarioError, folders, load, main, run_folder
from ha.evacuator.sim import World


@pytest.mark.parametrize("folder", folders(), ids=lambda p: p.name)
def test_scenario(folder: Path) -> None:
    ok, message = run_folder(folder)
    assert ok, message


def test_every_scenario_has_a_one_line_readme_and_a_reviewed_log() -> None:
    names = {p.name for p in folders()}
    assert len(names) >= 12
    for folder in folders():
        readme = (folder / "README").read_text().strip()
        assert readme and "\n" not in readme, folder.name
        assert (folder / "log.expect").is_file(), folder.name


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    folder = tmp_path / "single"
    shutil.copytree(SCENARIOS / "single-host-loss", folder)
    (folder / "log.expect").unlink()
    (folder / "log.actual").unlink(missing_ok=True)
    return folder


def test_a_missing_expectation_fails_and_is_not_written(scenario: Path) -> None:
    ok, message = run_folder(scenario)
    assert not ok and "no log.expect" in message
    assert not (scenario / "log.expect").exists()
    assert (scenario / "log.actual").exists()


def test_write_fills_in_the_expectation_for_review(scenario: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--write", str(scenario)]) == 0
    assert (scenario / "log.expect").read_text() == (scenario / "log.actual").read_text()
    assert main([str(scenario)]) == 0
    assert "single: ok" in capsys.readouterr().out


def test_a_changed_log_fails_with_a_diff(scenario: Path) -> None:
    run_folder(scenario, write=True)
    expect = scenario / "log.expect"
    expect.write_text(expect.read_text().replace("node4", "node9", 1))
    ok, message = run_folder(scenario)
    assert not ok and "-" in message and "node9" in message


def test_a_broken_invariant_fails_even_when_the_log_matches(
        scenario: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = World.step

    def step(self: World) -> None:
        original(self)
        if self.t == 1:
            self.violation("planted")

    monkeypatch.setattr(scenarios.World, "step", step)
    run_folder(scenario, write=True)
    ok, message = run_folder(scenario)
    assert not ok and "invariant broken: t=1: planted" in message


def test_a_bad_command_names_its_line(scenario: Path) -> None:
    (scenario / "cmds").write_text("at 1 power node3 off\nat 2 explode node3\n")
    with pytest.raises(ScenarioError, match=r"cmds:2: unknown command"):
        run_folder(scenario)
    (scenario / "cmds").write_text("power node3 off\n")
    with pytest.raises(ScenarioError, match=r"cmds:1: expected 'at SECOND COMMAND'"):
        load(scenario)


def test_an_unknown_hardware_key_is_refused(scenario: Path) -> None:
    (scenario / "hardware.yaml").write_text("nodes:\n  node1: {cores: 4}\n")
    with pytest.raises(ScenarioError, match="node1"):
        load(scenario)
