"""User-facing errors, and the one rule for squeezing any error into the single line a command prints.

Every problem a user can cause (missing folder, unknown category, corrupt checkpoint, failed download...)
raises a subclass of :class:`STFPMError`. The command-line entry points catch it and print its message as a
single ``error: ...`` line with a non-zero exit code, instead of a traceback.
"""

from __future__ import annotations


def one_line(value: object, first_line: bool = False, limit: int | None = None) -> str:
    """``value`` (an exception or any text) as one line: white space folded, or only its first non-empty line
    with ``first_line`` (for errors whose later lines are a library's long explanation), cut at ``limit``
    characters. An exception without a message gives its type's name."""
    text = str(value).strip()
    if first_line and text:
        text = text.splitlines()[0]
    text = " ".join(text.split())
    if not text and isinstance(value, BaseException):
        text = type(value).__name__
    return text if limit is None else text[:limit]


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


class ConfigError(STFPMError):
    """A command-line value or configuration file is missing, malformed, out of range or unknown."""


class SyntheticDataExistsError(DataError, FileExistsError):
    """The category folder exists with contents that were not written with the requested parameters."""


class TransientDownloadError(DownloadError):
    """A failure that a later attempt can fix (network trouble): retried, and the partial file is kept."""


class OneLineImageReadError(ImageReadError):
    """An :class:`ImageReadError` whose message stays one line even after a DataLoader worker.

    torch re-raises a worker's exception as ``type(exc)(formatted_traceback)``, which would make the CLI
    print a whole traceback as its ``error:`` line; this recovers the original message instead.
    """

    def __init__(self, message: str = "") -> None:
        if "Original Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            name = f"{type(self).__module__}.{type(self).__qualname__}: "
            message = last[len(name):] if last.startswith(name) else last
        super().__init__(message)
