"""What the recipes' ``train`` subcommands share: a YAML config with ``key=value``
overrides, a progress bar flag, and the run itself."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_train_arguments(parser: argparse.ArgumentParser, example_config: str) -> None:
    """``CONFIG [key=value ...] [-q]``; ``example_config`` names a shipped YAML file."""
    parser.add_argument("config", type=Path, help=f"YAML config (see {example_config})")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. training.lr=3e-4")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run_training(args: argparse.Namespace, config_class: type, train: Callable[..., Any]):
    """Load ``config_class`` from ``args.config`` with ``args.overrides`` (a ``ConfigError``,
    a ``ValueError`` the CLI reports, names the key at fault) and run ``train`` on it. Returns
    the recipe's result; it has ``main_process``, which only the main process should print."""
    from whisperforge.cli import _quiet_transformers
    from whisperforge.training.config import load_config

    config = load_config(config_class, args.config, args.overrides)
    _quiet_transformers()
    return train(config, progress=not args.quiet)
