"""Options, declared once per command and grouped in named sections; YAML files; argument checks.

Every option is declared once, on its command's parser, inside a *section* (``data``, ``model``, ``optimizer``,
``trainer`` for train.py; ``test``, ``predict``, ``export``; ``engine`` and ``thresholds`` shared by test.py
and predict.py). The section names are the YAML sections: a config file holds any of them, each command reads
its own sections and leaves the others' to them, so train.py, test.py and predict.py read the same files
(``configs/*.yaml``, or a run's saved ``config.yaml``). An unknown section, or an unknown key inside a section
of the command, is a one-line error. Precedence, lowest first: the parser's defaults, the YAML file given with
``--config``, the flags typed on the command line.

argparse (not jsonargparse/LightningCLI): those derive ``--image_size`` from a signature, with values as
``--image_size [64,64]``; the flags our users type are ``--image-size 64 64`` and ``--keep-aspect``.
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

__all__ = ["SECTIONS", "ConfigError", "Parser", "Section", "new_parser", "parse_args", "validate"]

SECTIONS: dict[str, str] = {
    "data": "train.py: the dataset, input size, split and loading",
    "model": "train.py: networks, maps and threshold calibration",
    "optimizer": "train.py: SGD",
    "trainer": "train.py: length, seed, devices, output",
    "test": "test.py: what to evaluate and where the results go",
    "predict": "predict.py: what to predict and what to write",
    "export": "scripts/export.py",
    "engine": "test.py and predict.py: devices, precision, batching",
    "thresholds": "test.py, predict.py and export: the decision thresholds",
}
"""Every section a config file may hold, and who reads it."""


class Section:
    """A named group of options; remembers which options it declared (through argparse's public return value)."""

    def __init__(self, parser: Parser, name: str, group: argparse._ArgumentGroup) -> None:
        self.parser, self.name, self.group = parser, name, group

    def add_argument(self, *flags: str, **kwargs: Any) -> argparse.Action:
        action = self.group.add_argument(*flags, **kwargs)
        self.parser.sections[self.name].append(action.dest)
        return action

    def add_mutually_exclusive_group(self) -> Section:
        exclusive = self.group.add_mutually_exclusive_group()
        return Section(self.parser, self.name, exclusive)


class Parser(argparse.ArgumentParser):
    """argparse with named sections and the project's error convention: ``error: <one line>`` on stderr, exit 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sections: dict[str, list[str]] = {}

    def section(self, name: str) -> Section:
        if name not in SECTIONS:
            raise ValueError(f"unknown section {name!r}")
        if name not in self.sections:
            self.sections[name] = []
            self._section_groups = getattr(self, "_section_groups", {})
            self._section_groups[name] = self.add_argument_group(f"{name} ({SECTIONS[name]})")
        return Section(self, name, self._section_groups[name])

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def new_parser(description: str) -> Parser:
    """An entry point's parser with the options every script shares: ``--config`` and ``--verbose``."""
    parser = Parser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", help="YAML file (sections as in configs/*.yaml); flags override it")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file: a mapping of sections (or of top-level options)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (data:, model:, ...) or options")
    return data


def config_values(parser: Parser, data: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """The options of ``parser`` that a config file sets; other commands' sections are left to them."""
    own = {dest for dests in parser.sections.values() for dest in dests}
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if isinstance(value, dict):
            if name not in SECTIONS:
                raise ConfigError(f"unknown section {key!r} in {source}; sections are {', '.join(SECTIONS)}")
            if name not in parser.sections:
                continue  # another command's section
            for option, option_value in value.items():
                dest = str(option).replace("-", "_")
                if dest not in parser.sections[name]:
                    raise ConfigError(f"unknown option {option!r} in section {key!r} of {source}")
                values[dest] = option_value
        elif name in own:
            values[name] = value
        else:
            raise ConfigError(f"unknown option {key!r} in {source} (options go in sections: {', '.join(SECTIONS)})")
    return values


def parse_args(parser: Parser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with the YAML file named by ``--config`` (if any) as defaults."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**config_values(parser, load_yaml(known.config), known.config))
    return parser.parse_args(argv)


def grouped(parser: Parser, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The resolved options by section, as a config file holds them (saved next to a run; ``--config`` reads it)."""
    return {name: {dest: getattr(args, dest) for dest in dests} for name, dests in parser.sections.items() if dests}


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
