"""The ``haven`` command: the cloud's commands (core.cli), extended with the HA
deployment's parts (ha.extensions), plus the cluster's commands."""

from __future__ import annotations

import argparse

from core import cli as core_cli
from ha.bootstrap import cli as cluster_cli
from ha.evacuator import cli as evacuator_cli
from ha.extensions import HA_EXTENSIONS
from ha.lab import cli as lab_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="haven", description="Haven private cloud")
    sub = parser.add_subparsers(dest="command", required=True)
    core_cli.add_commands(sub, HA_EXTENSIONS)
    lab_cli.add_commands(sub)
    cluster_cli.add_commands(sub)
    evacuator_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return core_cli.run(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
