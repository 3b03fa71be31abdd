"""The project's own error types.

Every error a user can cause with bad input (a missing file, a corrupt image, malformed JSON, a
wrong shape) is raised as one of these, with a message that names the file and the problem.
"""

from __future__ import annotations

from os import PathLike


class MultiflowError(Exception):
    """Base class of every error multiflow raises on purpose."""


class DataError(MultiflowError):
    """Bad input data: names the offending file (when there is one) and what is wrong with it."""

    def __init__(self, message: str, path: str | PathLike | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ConfigError(MultiflowError):
    """An invalid configuration value or combination of options."""


class CheckpointError(MultiflowError):
    """A missing, corrupt or incompatible checkpoint / cache entry."""

    def __init__(self, message: str, path: str | PathLike | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class TrainingError(MultiflowError):
    """Training diverged (NaN/inf loss) or cannot continue."""


class MissingDependencyError(MultiflowError):
    """An optional package (an extra of ``pyproject.toml``) needed for this feature is not installed."""
