"""YAML configuration files with command-line overrides, shared by train.py, test.py and predict.py.

Order of precedence, lowest first: the defaults declared on the argument parser, the YAML file given with
``--config`` (keys may be grouped in sections such as ``model:`` or ``trainer:``; sections are flattened),
then every flag typed on the command line.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import yaml

from stfpm.errors import ConfigError

__all__ = ["ConfigError", "Parser", "new_parser", "parse_args", "validate"]


class Parser(argparse.ArgumentParser):
    """argparse with the project's error convention: ``error: <one line>`` on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def new_parser(description: str) -> argparse.ArgumentParser:
    """An entry point's parser with the options every script shares: ``--config`` and ``--verbose``."""
    parser = Parser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    try:
        if "," in text:
            return [int(v) for v in text.split(",") if v.strip()]
        return int(text) if text.lstrip("-").isdigit() else text
    except ValueError:
        raise ConfigError(f"--devices must be auto, a count (2) or indices (0,1), got {value!r}") from None


# ------------------------------------------------------------------------------------------------ validation

Check = tuple[Callable[[Any], bool], str]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(minimum: int, maximum: int | None = None) -> Check:
    """An integer in [minimum, maximum]."""
    text = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
    return (lambda v: _is_int(v) and v >= minimum and (maximum is None or v <= maximum)), text


def number(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False) -> Check:
    """A finite number in an interval; open ends exclude the bound."""
    def ok(v: Any) -> bool:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            return False
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    left, right = "(" if low_open else "[", ")" if high_open or high == math.inf else "]"
    upper = "inf" if high == math.inf else f"{high:g}"
    return ok, f"a finite number in {left}{low:g}, {upper}{right}"


def finite() -> Check:
    return (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)), "a finite number"


def sizes(minimum: int) -> Check:
    """One or two integers (S, or H W), each >= minimum."""
    def ok(v: Any) -> bool:
        values = v if isinstance(v, (list, tuple)) else [v]
        return 1 <= len(values) <= 2 and all(_is_int(x) and x >= minimum for x in values)

    return ok, f"one or two integers (S, or H W), each >= {minimum}"


def duration() -> Check:
    """Lightning's DD:HH:MM:SS."""
    return (lambda v: isinstance(v, str) and re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", v) is not None), "DD:HH:MM:SS"


def validate(args: argparse.Namespace, checks: dict[str, Check]) -> None:
    """Check parsed values (from flags or a YAML file) before any work starts; one-line :class:`ConfigError`."""
    for dest, (ok, what) in checks.items():
        value = getattr(args, dest, None)
        if value is not None and not ok(value):
            raise ConfigError(f"--{dest.replace('_', '-')} must be {what}, got {value!r}")


def writable_folder(path: str | Path, flag: str) -> Path:
    """A folder we may create or write into; a one-line error when it is a file or not writable."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{flag} {folder} exists and is not a folder")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {folder}: cannot write into {existing}")
    return folder


def existing_file(path: str | Path, flag: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{flag} {file} does not exist" if not file.exists() else f"{flag} {file} is not a file")
    return file
