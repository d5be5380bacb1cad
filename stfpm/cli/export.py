"""`stfpm-export` / `python scripts/export.py`: export a trained checkpoint for deployment
(`--checkpoint CKPT --output model.pt2 [--format ...]`)."""

from __future__ import annotations

from pathlib import Path

from stfpm.cli import parse_command
from stfpm.core.errors import ConfigError
from stfpm.inference.export import export
from stfpm.inference.thresholding import ThresholdPolicy
from stfpm.model.checkpoint import load_checkpoint


def main(argv: list[str] | None = None) -> int:
    s = parse_command("stfpm-export", __doc__ or "", argv)
    options, thresholds = s["export"], s["thresholds"]
    if not options.checkpoint or not options.output:
        raise ConfigError("pass --checkpoint (a checkpoint of train.py) and --output (the file to write)")
    thresholds.check_paths()
    model = load_checkpoint(options.checkpoint)
    path = export(model, Path(options.output), options.format, ThresholdPolicy.of(thresholds, model.thresholds))
    print(f"exported {options.format} to {path} (metadata: {path}.json)")
    return 0


def cli() -> int:
    """The console script: :func:`main` with the error convention."""
    from stfpm.cli import run

    return run(main)
