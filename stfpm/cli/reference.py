"""`python -m stfpm.cli.reference > docs/options.md`: the option reference, generated from the option sections
(a test keeps docs/options.md equal to it)."""

from __future__ import annotations

import sys

from stfpm.cli import commands
from stfpm.core.options import option_table

INTRO = """# Options

Generated from the code by `python -m stfpm.cli.reference > docs/options.md`; a test keeps this page equal to it.

Every command accepts `--config FILE.yaml` and `--verbose`. Options are grouped in sections; a config file holds
sections of options, keys are the flag names with `_` (`configs/*.yaml`, or a run's saved `config.yaml`, which
`train.py --config` reads back to repeat the run). Every command reads the same files and takes its own sections
from them, so `python test.py --config configs/official.yaml` works. Precedence, lowest first: the default, the
config file, the flags typed. An unknown section or option, an option in the wrong section, or a value out of its
range is a one-line error before any work starts. A file of an earlier version (with a `model:` section) is read by
option name. `configs/default.yaml` states the defaults; `configs/official.yaml` is the paper's recipe.
"""


def reference() -> str:
    parts = [INTRO]
    for command, sections in commands().items():
        parts.append(f"## `{command}`\n")
        for cls in sections:
            parts.append(f"### `{cls.name}`: {cls.about}\n\n{option_table(cls)}")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(reference())
