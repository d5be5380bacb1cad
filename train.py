#!/usr/bin/env python
"""Train STFPM: `python train.py --category carpet` (see `--help` and README.md)."""

import sys

from stfpm.cli import run
from stfpm.cli.train import main

if __name__ == "__main__":
    sys.exit(run(main))
