"""`stfpm-serve`: an HTTP service answering "good or bad, and where" for uploaded photos (see `--help`)."""

from __future__ import annotations

from stfpm.cli import parse_command
from stfpm.serving.server import serve

DESCRIPTION = ("Serve a trained model over HTTP: POST /predict with an image, GET /health. Listens on 127.0.0.1 "
               "unless told otherwise.")


def main(argv: list[str] | None = None) -> int:
    s = parse_command("stfpm-serve", DESCRIPTION, argv)
    serve(s["serve"], s["devices"], s["thresholds"], s["postprocess"], s["runtime"])
    return 0


def cli() -> int:
    """The console script: :func:`main` with the error convention."""
    from stfpm.cli import run

    return run(main, interrupted="stopped")
if __name__ == "__main__":
    raise SystemExit(cli())
