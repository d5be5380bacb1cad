"""YAML configuration files with command-line overrides, shared by train.py, test.py and predict.py.

Order of precedence, lowest first: the defaults declared on the argument parser, the YAML file given with
``--config`` (keys may be grouped in sections such as ``model:`` or ``trainer:``; sections are flattened),
then every flag typed on the command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from stfpm.errors import STFPMError


class ConfigError(STFPMError):
    """A configuration file is missing, malformed or names an unknown option."""


def new_parser(description: str) -> argparse.ArgumentParser:
    """An entry point's parser with the options every script shares: ``--config`` and ``--verbose``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", help="YAML file of defaults (see configs/); flags override it")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def _flatten(mapping: dict[str, Any], source: Path) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, source))
        else:
            flat[str(key).replace("-", "_")] = value
    return flat


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a flat ``{option: value}`` mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of options")
    return _flatten(data, path)


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with the YAML file named by ``--config`` (if any) as defaults."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        values = load_yaml(known.config)
        dests = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - dests)
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)} in {known.config}")
        parser.set_defaults(**values)
    return parser.parse_args(argv)


def grouped(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The resolved options grouped by the parser's argument groups, for saving next to a run."""
    out: dict[str, dict[str, Any]] = {}
    for group in parser._action_groups:
        values = {
            a.dest: getattr(args, a.dest)
            for a in group._group_actions
            if a.dest not in ("help", "config") and hasattr(args, a.dest)
        }
        if values:
            out[group.title or "options"] = values
    return out


def parse_devices(value: str | int | list[int]) -> str | int | list[int]:
    """``auto``, a device count (``2``) or a list of device indices (``0,1``), as the Trainer expects."""
    if isinstance(value, (int, list)):
        return value
    text = str(value).strip()
    if "," in text:
        return [int(v) for v in text.split(",") if v.strip()]
    return int(text) if text.lstrip("-").isdigit() else text
