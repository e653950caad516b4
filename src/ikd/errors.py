"""User-facing errors: each carries one line that names what was wrong and what was expected.

The CLI prints `str(error)` on stderr and exits with code 2; anything else is a bug and gets a
traceback (or, without --debug, one line saying so).
"""


class IkdError(Exception):
    """A problem with the user's input (files, flags, data) rather than with ikd itself."""


class DataError(IkdError):
    """A dataset file is missing, malformed or does not match what its format promises."""


class ConfigError(IkdError):
    """A flag or configuration value is invalid."""


class CheckpointError(IkdError):
    """A model directory is missing files or its files do not agree with each other."""


class ForeignStateError(CheckpointError):
    """A training state directory holds the state of another job (settings, model, data, device or
    precision), so resuming it here would not continue the same training. `keys`: the job's keys that
    differ (config.lr, data, ...), where the state says."""

    def __init__(self, message: str, keys: list[str] | None = None):
        super().__init__(message)
        self.keys = keys


def first_validation_error(exc) -> tuple[str, dict]:
    """The dotted key and details of a pydantic ValidationError's first error: one line's worth."""
    first = exc.errors()[0]
    return ".".join(str(part) for part in first["loc"]), first
