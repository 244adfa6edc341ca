"""User-facing errors: each carries one line that says what is wrong and what to do."""


class PipelineError(Exception):
    """Base class: the CLI prints str(error) on one line and exits non-zero, no traceback."""

    exit_code = 2


class ConfigError(PipelineError):
    """A config value is invalid (names the key and the value)."""


class DataError(PipelineError):
    """Input data is unusable (names the source, file or column)."""


class DataUnavailable(DataError):
    """The data cannot be had on this machine (no network or token, and no cache): a study may
    skip it; anything else wrong with data is a failure."""


class TrackingError(PipelineError):
    """The MLflow tracking store or registry cannot be used."""


class TrainingInterrupted(PipelineError):
    """Stopped by a signal (pre-emption, Ctrl-C); the run is KILLED and can be resumed."""

    exit_code = 143  # the shell's convention for "terminated by SIGTERM"


def require(condition: bool, key: str, value: object, expectation: str) -> None:
    """Raise a ConfigError naming `key=value` unless `condition` holds."""
    if not condition:
        raise ConfigError(f"{key}={value!r}: {expectation}")
