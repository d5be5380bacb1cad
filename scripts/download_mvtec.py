#!/usr/bin/env python
"""Download the MVTec AD dataset into a data root (same as `stfpm-download`; see --help)."""

import sys

from stfpm.cli.download import cli

if __name__ == "__main__":
    sys.exit(cli())
