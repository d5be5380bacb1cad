"""The bottom layer: user-facing errors and their one-line text, atomic file writes, the option spec and the
run-folder layout. Nothing here imports another part of the package."""
