"""`python test.py`: evaluate the latest run of a category (or every category) on its test split (see `--help`)."""

from __future__ import annotations

from stfpm.cli import parse_command
from stfpm.evaluation.evaluate import Evaluation

DESCRIPTION = "Evaluate STFPM on the test split: image/pixel AUROC, pixel AUPRO, F1-max, per defect type."


def main(argv: list[str] | None = None) -> int:
    s = parse_command("test.py", DESCRIPTION, argv)
    Evaluation(s["test"], s["engine"], s["devices"], s["thresholds"], s["runtime"]).run()
    return 0


def cli() -> int:
    """The console script: :func:`main` with the error convention."""
    from stfpm.cli import run

    return run(main)
