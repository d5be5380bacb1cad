#!/usr/bin/env python
"""Evaluate STFPM: `python test.py --category carpet` (see `--help` and README.md)."""

import sys

from stfpm.cli.test import cli

if __name__ == "__main__":
    sys.exit(cli())
