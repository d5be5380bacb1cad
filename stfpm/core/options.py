"""Options declared once: each concern's settings are a frozen dataclass (a *section*) whose fields carry their
flag, type, default, range or choices and help.

From the sections come the command-line flags, the YAML sections of config files, the checks of every value
(whether it came from a flag, a file or Python), the saved ``config.yaml``, a checkpoint's hyperparameters and
the option reference in ``docs/options.md``. Precedence, lowest first: a field's default, the YAML file given
with ``--config``, the flags typed on the command line.

argparse (not jsonargparse/LightningCLI): those derive ``--image_size`` from a signature, with values as
``--image_size [64,64]``; the flags our users type are ``--image-size 64 64`` and ``--keep-aspect``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import yaml

from stfpm.core.errors import ConfigError, one_line

Check = tuple[Callable[[Any], bool], str]
"""A predicate and what it accepts, in words (``an integer >= 1``)."""

LEGACY_SECTIONS = frozenset({"model"})
"""Sections of config files written by earlier versions: such a file is read by option name."""


@dataclasses.dataclass(frozen=True)
class Spec:
    """How one field of a section is typed, checked, shown and given on the command line."""

    help: str
    kind: type | None = None  # the type of a flag's value(s): int, float, str; bool for switches
    check: Check | None = None
    choices: tuple[str, ...] | None = None
    many: bool = False  # takes one or more values
    metavar: str | None = None
    flag: bool = True  # False: recorded and read from files, never a flag
    negatable: bool = False  # a switch with a --no- form
    normalize: Callable[[Any], Any] | None = None  # a flag's or file's value -> the field's value
    path: str | None = None  # "file" or "folder": checked on the file system by Section.check_paths
    keywords: tuple[str, ...] = ()  # words a path option takes instead of a path
    group: str | None = None  # switches of one group exclude each other
    shown_default: str | None = None  # the default as help and docs state it, when its value depends on the machine


def option(default: Any, help: str, **spec: Any) -> Any:
    """A section field: its default and its :class:`Spec`."""
    return dataclasses.field(default=default, metadata={"spec": Spec(help, **spec)})


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def plain(value: Any) -> Any:
    """A value as YAML, JSON and checkpoints hold it: tuples become lists."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


class Section:
    """Base of the settings dataclasses (``@dataclass(frozen=True)`` subclasses, ``name`` and ``about`` set).

    Every value is normalized and checked when the object is made, so code that receives a section trusts it.
    """

    name: ClassVar[str]
    about: ClassVar[str]

    def __post_init__(self) -> None:
        for field, spec in self.specs():
            value = getattr(self, field.name)
            if value is None:
                continue
            if spec.normalize is not None:
                value = spec.normalize(value)
                object.__setattr__(self, field.name, value)
            _check(field.name, value, spec)

    @classmethod
    def specs(cls) -> list[tuple[dataclasses.Field, Spec]]:
        return [(f, f.metadata["spec"]) for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f, _ in cls.specs()]

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> Any:
        """The section with ``values`` over the defaults; an unknown name is a one-line error."""
        unknown = set(values) - set(cls.names())
        if unknown:
            raise ConfigError(f"unknown option {sorted(unknown)[0]!r} in section {cls.name!r}")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return {name: plain(getattr(self, name)) for name in self.names()}

    @classmethod
    def earlier(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` (option name -> value, from a file or a checkpoint) with the names and values of earlier
        versions translated to this one's; a section whose options were renamed overrides this."""
        return dict(values)

    def check_paths(self) -> None:
        """The file-system checks of path options (before any work starts; not done for recorded settings)."""
        for field, spec in self.specs():
            value = getattr(self, field.name)
            if spec.path is None or value is None or value in spec.keywords:
                continue
            path = Path(str(value)).expanduser()
            if spec.path == "folder":
                writable_folder(path, flag_of(field.name))
            elif not path.is_file():
                words = f" (pass {', '.join(spec.keywords)} or a file)" if spec.keywords else ""
                state = "does not exist" if not path.exists() else "is not a file"
                raise ConfigError(f"{flag_of(field.name)} {path} {state}{words}")


def _check(name: str, value: Any, spec: Spec) -> None:
    values = value if spec.many and isinstance(value, (list, tuple)) else [value]
    if spec.choices is not None and not all(isinstance(v, str) and v in spec.choices for v in values):
        raise ConfigError(f"{flag_of(name)} must be one of {', '.join(spec.choices)}, got {value!r}")
    if spec.kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{flag_of(name)} must be true or false, got {value!r}")
    if spec.kind is str and spec.check is None and spec.choices is None and not all(isinstance(v, str) for v in values):
        raise ConfigError(f"{flag_of(name)} must be text, got {value!r}")
    if spec.check is not None and not spec.check[0](value):
        raise ConfigError(f"{flag_of(name)} must be {spec.check[1]}, got {value!r}")


# ------------------------------------------------------------------------------------------------ checks


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


# ------------------------------------------------------------------------------------------------ command line


class Parser(argparse.ArgumentParser):
    """argparse with the project's error convention: ``error: <one line>`` on stderr, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _help(field: dataclasses.Field, spec: Spec) -> str:
    if spec.shown_default is not None:
        return f"{spec.help} (default: {spec.shown_default})"
    default = field.default
    if default is None or default is False or spec.kind is bool:
        return spec.help
    shown = " ".join(str(v) for v in default) if isinstance(default, (list, tuple)) else default
    return f"{spec.help} (default: {shown})"


def _add_flag(target: Any, field: dataclasses.Field, spec: Spec) -> None:
    kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS, "help": _help(field, spec)}
    if spec.kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction if spec.negatable else "store_true"
    else:
        kwargs.update(type=spec.kind or str, metavar=spec.metavar)
        if spec.many:
            kwargs["nargs"] = "+"
        if spec.choices is not None and not spec.many:
            kwargs["choices"] = list(spec.choices)
    target.add_argument(flag_of(field.name), **kwargs)


def command_parser(description: str, sections: Sequence[type[Section]]) -> Parser:
    """The flags of ``sections``, grouped as in config files, with ``--config`` and ``--verbose``."""
    parser = Parser(description=description)
    parser.add_argument("--config", help="YAML file of sections (configs/*.yaml, a run's config.yaml); flags override it")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    for cls in sections:
        group = parser.add_argument_group(f"{cls.name} ({cls.about})")
        exclusive: dict[str, Any] = {}
        for field, spec in cls.specs():
            if not spec.flag:
                continue
            if spec.group is not None and spec.group not in exclusive:
                exclusive[spec.group] = group.add_mutually_exclusive_group()
            _add_flag(group if spec.group is None else exclusive[spec.group], field, spec)
    return parser


def parse(
    parser: Parser, sections: Sequence[type[Section]], argv: list[str] | None,
    known: Mapping[str, Collection[str]] | None = None,
) -> dict[str, Any]:
    """Each section's settings from its defaults, the ``--config`` file and the flags; ``known`` names the
    sections of other commands and their options, which a shared config file may hold."""
    given = vars(parser.parse_args(argv))
    path, _ = given.pop("config", None), given.pop("verbose", None)
    owner = {name: cls.name for cls in sections for name in cls.names()}
    values: dict[str, dict[str, Any]] = {cls.name: {} for cls in sections}
    if path:
        for name, value in config_values(load_yaml(path), sections, known or {}, path).items():
            values[owner[name]][name] = value
    for name, value in given.items():
        values[owner[name]][name] = value
    return {cls.name: cls.of(values[cls.name]) for cls in sections}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file: a mapping of sections."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {one_line(exc, first_line=True)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (data:, input:, ...)")
    return data


def config_values(
    data: Mapping[str, Any], sections: Sequence[type[Section]], known: Mapping[str, Collection[str]],
    source: str | Path,
) -> dict[str, Any]:
    """The options of ``sections`` that a config file sets; the sections of other commands (``known``: section
    name -> option names) are left to them. A file written by an earlier version (it has a section of
    :data:`LEGACY_SECTIONS`) is read by option name."""
    own = {cls.name: set(cls.names()) for cls in sections}
    home = {name: section for section, names in own.items() for name in names}
    elsewhere = {name for names in known.values() for name in names}
    legacy = any(str(key) in LEGACY_SECTIONS for key in data)
    values: dict[str, Any] = {}
    for key, options in data.items():
        section = str(key).replace("-", "_")
        if not isinstance(options, dict):
            raise ConfigError(f"{source}: {key!r} is not a section (options go in sections: {', '.join(own)}, ...)")
        for cls in sections:
            if cls.name == section or (legacy and section in LEGACY_SECTIONS):
                options = cls.earlier({str(k).replace("-", "_"): v for k, v in options.items()})
        if section not in own and section not in known and section not in LEGACY_SECTIONS:
            raise ConfigError(f"unknown section {key!r} in {source}")
        if section not in own and not (legacy and section in LEGACY_SECTIONS):
            continue  # another command's section
        for option_name, value in options.items():
            name = str(option_name).replace("-", "_")
            if name in own.get(section, ()) or (legacy and name in home):
                values[name] = value
            elif name in home:
                raise ConfigError(f"option {option_name!r} belongs in section {home[name]!r}, not {key!r} ({source})")
            elif section in own or name not in elsewhere:
                raise ConfigError(f"unknown option {option_name!r} in section {key!r} of {source}")
    return values


def as_config(*sections: Section) -> dict[str, dict[str, Any]]:
    """Settings as a config file holds them (a run's config.yaml; ``--config`` reads it back)."""
    return {s.name: s.as_dict() for s in sections}


def option_table(cls: type[Section]) -> str:
    """The Markdown table of a section's flags: flag, default, meaning."""
    rows = ["| flag | default | meaning |", "| --- | --- | --- |"]
    for field, spec in cls.specs():
        if not spec.flag:
            continue
        default = spec.shown_default if spec.shown_default is not None else field.default
        if isinstance(default, (list, tuple)):
            default = " ".join(str(v) for v in default)
        shown = ("on" if default else "off") if spec.kind is bool else "" if default is None else f"`{default}`"
        flag = f"`{flag_of(field.name)}`" + (f" / `--no-{field.name.replace('_', '-')}`" if spec.negatable else "")
        text = spec.help + (f" (one of {', '.join(f'`{c}`' for c in spec.choices)})" if spec.choices else "")
        rows.append(f"| {flag} | {shown} | {text.replace('|', '/')} |")
    return "\n".join(rows) + "\n"
