#!/usr/bin/env python
"""Export a trained checkpoint (same as `stfpm-export`; see --help)."""

import sys

from stfpm.cli import run
from stfpm.cli.export import main

if __name__ == "__main__":
    sys.exit(run(main))
