"""`python predict.py`: binary defect masks and heatmaps for a folder (or file) of new images (see `--help`)."""

from __future__ import annotations

from stfpm.cli import parse_command
from stfpm.core.errors import STFPMError
from stfpm.inference.folder import predict_folder

DESCRIPTION = "Write black/white defect masks (0/255) and heatmaps for new images."


def main(argv: list[str] | None = None) -> int:
    s = parse_command("predict.py", DESCRIPTION, argv)
    summary = predict_folder(s["predict"], s["engine"], s["devices"], s["thresholds"], postprocess=s["postprocess"],
                             runtime=s["runtime"])
    print(summary.line())
    if summary.images == 0:
        raise STFPMError("no image could be processed")
    return 0


def cli() -> int:
    """The console script: :func:`main` with the error convention."""
    from stfpm.cli import run

    return run(main)
