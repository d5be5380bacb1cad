"""The command-line entry points (one module each: train, test, predict, export, download, serve) and their shared
plumbing: logging, the error convention (`error: <one line>` on stderr, exit code 2, no traceback) and which
option sections each command reads.

Each command module has ``main(argv)`` (testable, raises on user errors) and ``cli()`` (the console script of
pyproject.toml, e.g. `stfpm-train`: ``main`` under :func:`run`); the top-level `train.py`, `test.py` and
`predict.py` call the same ``cli``.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from stfpm.core.errors import STFPMError
from stfpm.core.options import Section, command_parser, parse


def commands() -> dict[str, Sequence[type[Section]]]:
    """The option sections of each command; a config file may hold any of them, each command reads its own.
    (Imported when asked: `stfpm-download` needs none of the model's packages.)"""
    from stfpm.evaluation.settings import TestSettings
    from stfpm.inference.settings import (
        DeviceSettings,
        EngineSettings,
        ExportSettings,
        PostprocessSettings,
        PredictSettings,
        RuntimeSettings,
        ThresholdSettings,
    )
    from stfpm.serving.settings import ServeSettings
    from stfpm.tools.settings import DownloadSettings
    from stfpm.training.fitting import TrainSettings

    return {
        "train.py": TrainSettings.SECTIONS,
        "test.py": (TestSettings, EngineSettings, DeviceSettings, RuntimeSettings, ThresholdSettings),
        "predict.py": (PredictSettings, PostprocessSettings, EngineSettings, DeviceSettings, RuntimeSettings,
                       ThresholdSettings),
        "stfpm-export": (ExportSettings, ThresholdSettings),
        "stfpm-serve": (ServeSettings, PostprocessSettings, DeviceSettings, RuntimeSettings, ThresholdSettings),
        "stfpm-download": (DownloadSettings,),
    }


def parse_command(command: str, description: str, argv: list[str] | None) -> dict[str, Any]:
    """A command's settings by section, from its defaults, ``--config`` and its flags."""
    table = commands()
    sections = table[command]
    known = {cls.name: cls.names() for classes in table.values() for cls in classes}
    return parse(command_parser(description, sections), sections, argv, known)


def _drop_advertising(record: logging.LogRecord) -> bool:
    """Lightning logs tips about optional cloud products at every start; they are not about this run."""
    return "💡 Tip" not in record.getMessage()


def setup_logging(verbose: bool = False) -> None:
    """Plain ``level: message`` lines on stderr; quieter third-party chatter unless ``verbose``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s: %(message)s", force=True
    )
    if not verbose:
        logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_drop_advertising)
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*The number of training batches.*")
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")


def run(
    main: Callable[[list[str] | None], int], argv: list[str] | None = None, interrupted: str = "interrupted"
) -> int:
    """Run an entry point; a user error becomes ``error: ...`` on stderr and exit code 2."""
    args = argv if argv is not None else sys.argv
    setup_logging("--verbose" in args or "-v" in args)
    try:
        return main(argv)
    except STFPMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
