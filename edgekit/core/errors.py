"""The errors edgekit raises for user mistakes.

Every error carries one line naming the problem and, where one exists, the fix. The CLI prints
that line and exits non-zero; Python callers catch the specific type. Torch-free.
"""
from __future__ import annotations


class EdgekitError(Exception):
    """Base class: a problem the user can fix. ``str(err)`` is one line."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message} (fix: {hint})")


class BundleError(EdgekitError):
    """A bundle cannot be read or trusted."""


class ChecksumError(BundleError):
    """A file in the bundle does not match the sha256 its manifest records."""


class UnsafePathError(BundleError):
    """A manifest path points outside the bundle directory."""


class FormatVersionError(BundleError):
    """The manifest is of an unknown format or format version."""


class MissingFileError(BundleError, FileNotFoundError):
    """A path the user gave, or a file the manifest names, does not exist."""


class UnsafeFileError(BundleError):
    """A bundle entry is not a regular file or directory: a symlink, FIFO, device or socket."""


class InputError(EdgekitError, ValueError):
    """Inputs given to a session do not match its input specs."""


class InputNameError(InputError, KeyError):
    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return EdgekitError.__str__(self)


class InputDtypeError(InputError, TypeError):
    pass


class InputRankError(InputError):
    pass


class InputShapeError(InputError):
    pass


class NonFiniteInputError(InputError):
    """A float input holds NaN or +-inf (refused unless the session allows it: allow_nonfinite)."""


class InferenceError(EdgekitError):
    """The backend failed on inputs that passed the checks; the session stays usable."""


class BackendUnavailableError(EdgekitError, ImportError):
    """A backend library is not installed (or cannot run on this machine)."""


class ExportError(EdgekitError):
    """A model could not be exported to a target."""


class DiskFullError(ExportError, OSError):
    """The disk filled up while a bundle was written; nothing half-written was left."""


class ValidationFailed(EdgekitError):
    """An artifact's outputs differ from the PyTorch reference beyond tolerance."""


class DataError(EdgekitError, ValueError):
    """User data (an .npz/.npy file, calibration set, personal samples) is unusable."""


class UsageError(EdgekitError, ValueError):
    """Bad arguments: unknown target, precision, model spec, ..."""


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, at most ``limit`` characters (one-line errors)."""
    return (str(e).strip().splitlines() or [""])[0][:limit]
