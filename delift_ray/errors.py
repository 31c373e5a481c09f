"""User-facing errors.

Everything a user can cause (bad input, bad config, a missing file) is raised as a
:class:`DeliftError` subclass whose message is one line that says what was wrong and,
where possible, what was found instead. The CLI prints that line and exits 2; it never
shows a traceback for these.
"""


class DeliftError(Exception):
    """Base class of every error the CLI reports as a one-line message."""


class ConfigError(DeliftError):
    """The configuration (YAML file or flags) is invalid."""


class DataError(DeliftError):
    """The input data cannot be read or contains no usable rows."""


class BudgetError(DeliftError):
    """The selection budget does not fit the pool."""


class ScoringError(DeliftError):
    """Scoring failed in a way retries did not fix."""


class StorageError(DeliftError):
    """The output or cache location cannot be used."""
