#!/usr/bin/env python
"""Predict defect masks and heatmaps: `python predict.py --category carpet --input DIR --output DIR`."""

import sys

from stfpm.cli.predict import cli

if __name__ == "__main__":
    sys.exit(cli())
