"""`python train.py`: fit STFPM on one category (or all) of an MVTec-AD-layout dataset (see `--help`)."""

from __future__ import annotations

from pytorch_lightning.utilities import rank_zero_only

from stfpm.cli import parse_command
from stfpm.training import TrainSettings, fit


def main(argv: list[str] | None = None) -> int:
    sections = parse_command("train.py", "Train STFPM on one category (or `all`) of an MVTec-AD-layout dataset.", argv)
    results = fit(TrainSettings.from_sections(sections))
    if getattr(rank_zero_only, "rank", 0) == 0:  # under DDP every process gets here; one report is enough
        for result in results:
            print(f"{result.category}: {result.best}")
    return 0


def cli() -> int:
    """The console script: :func:`main` with the error convention."""
    from stfpm.cli import run

    return run(main)
