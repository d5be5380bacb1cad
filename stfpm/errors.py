"""User-facing error types.

Every problem a user can cause (missing folder, unknown category, corrupt checkpoint, failed download...)
raises a subclass of :class:`STFPMError`. The command-line entry points catch it and print its message as a
single ``error: ...`` line with a non-zero exit code, instead of a traceback.
"""

from __future__ import annotations


class STFPMError(Exception):
    """Base class for errors whose message is meant for the user, as one line."""


class DataError(STFPMError):
    """A dataset folder, image or mask cannot be used."""


class ImageReadError(DataError):
    """One image file is unreadable, truncated or not an image."""


class CheckpointError(STFPMError):
    """A checkpoint is missing, unreadable or was not written by this project."""


class WeightsError(STFPMError):
    """Backbone weights cannot be obtained or do not fit the architecture."""


class DownloadError(STFPMError):
    """A dataset download failed or produced a corrupt archive."""
