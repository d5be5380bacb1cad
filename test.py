#!/usr/bin/env python
"""Evaluate STFPM: `python test.py --category carpet` (see `--help` and README.md)."""

import sys

from stfpm.cli import run
from stfpm.cli.test import main

if __name__ == "__main__":
    sys.exit(run(main))
