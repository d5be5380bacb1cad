"""`stfpm-export` / `python scripts/export.py`: export a trained checkpoint for deployment
(`--checkpoint CKPT --output model.pt2 [--format ...]`)."""

from __future__ import annotations

from pathlib import Path

from stfpm.config import Parser, existing_file, validate
from stfpm.inference.engine import THRESHOLD_CHECKS, add_threshold_args, threshold_policy
from stfpm.inference.export import FORMATS, export
from stfpm.model.checkpoint import load_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__)
    options = parser.section("export")
    options.add_argument("--checkpoint", required=True, help="checkpoint written by train.py")
    options.add_argument("--output", required=True, help="file to write (metadata goes to OUTPUT.json)")
    options.add_argument(
        "--format", default="exported_program", choices=FORMATS,
        help="exported_program (torch.export, .pt2), torchscript (deprecated by PyTorch) or onnx",
    )
    parser.add_argument("--verbose", action="store_true")
    add_threshold_args(parser)
    args = parser.parse_args(argv)
    validate(args, THRESHOLD_CHECKS)
    if args.thresholds_from:
        existing_file(args.thresholds_from, "--thresholds-from")
    model = load_checkpoint(args.checkpoint)
    path = export(model, Path(args.output), args.format, threshold_policy(args, model))
    print(f"exported {args.format} to {path} (metadata: {path}.json)")
    return 0


def cli() -> int:
    """The console script: :func:`main` with the error convention."""
    from stfpm.cli import run

    return run(main)
