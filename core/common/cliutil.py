"""What every ``haven`` sub-command shares, whichever part of Haven defines it.

The cloud's commands (``core.cli``) and the cluster's (``ha.*.cli``) are one
command line: they take the same options to find the configuration, read it the
same way and report operator mistakes the same way. This module is that
contract, public on purpose, so no part reaches into another's private helpers:

* :class:`UsageError` -- an operator mistake (bad option, bad input): the
  dispatcher (``core.cli.run``) prints it as one line and exits 2, never with a
  traceback.
* :func:`common_options` -- adds ``--config``, ``--state-dir`` and ``--set
  KEY=VALUE`` to a sub-command's parser.
* :func:`config_from_args` -- the configuration those options name
  (``$HAVEN_CONFIG`` when ``--config`` is absent), overrides applied.
* :func:`open_database` -- the configured database, its state directory
  created private first (a SQLite file lives there).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import yaml

from core.common.config import HavenConfig, load_config
from core.common.db import Database
from core.common.private import private_dir


class UsageError(Exception):
    """An operator mistake: printed as one line, exit code 2."""


def common_options(parser: argparse.ArgumentParser) -> None:
    """Add the options every command that reads the configuration takes."""
    parser.add_argument("--config", help="YAML config file (default: $HAVEN_CONFIG or none)")
    parser.add_argument("--state-dir", help="override state_dir")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override one setting, e.g. --set identity.listen=0.0.0.0:5000")


def config_from_args(args: argparse.Namespace) -> HavenConfig:
    """The configuration named by :func:`common_options`' options; a malformed
    ``--set`` is a UsageError, a bad file or value a ConfigError (both exit 2)."""
    overrides: dict[str, Any] = {}
    if getattr(args, "state_dir", None):
        overrides["state_dir"] = args.state_dir
    for dotted in getattr(args, "set", None) or []:
        key, sep, value = dotted.partition("=")
        if not sep:
            raise UsageError(f"--set wants KEY=VALUE, got {dotted!r}")
        overrides[key] = yaml.safe_load(value)
    return load_config(getattr(args, "config", None) or os.environ.get("HAVEN_CONFIG"),
                       overrides)


def open_database(cfg: HavenConfig) -> Database:
    """The configured database (its state directory made first, mode 0700)."""
    private_dir(cfg.state_path)
    return Database(cfg.database_url, cfg.database.pool_size, cfg.database.max_retries,
                    cfg.database.ssl_ca)
