#!/usr/bin/env python
"""Export a trained checkpoint (same as `stfpm-export`; see --help)."""

import sys

from stfpm.cli.export import cli

if __name__ == "__main__":
    sys.exit(cli())
