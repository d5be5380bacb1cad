#!/usr/bin/env python
"""Train STFPM: `python train.py --category carpet` (see `--help` and README.md)."""

import sys

from stfpm.cli.train import cli

if __name__ == "__main__":
    sys.exit(cli())
