"""Exceptions meant for people: each carries one sentence naming what is wrong and what is expected.

The command line (`main.py`) turns any of these into that sentence on stderr and exit code 2.
"""


class SGMError(Exception):
    """Base class of every error sgm raises on purpose."""


class ConfigError(SGMError, ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


class DataError(SGMError, ValueError):
    """A data file is missing, truncated, corrupt, or holds values that cannot be used (NaN/inf)."""


class CheckpointError(SGMError, ValueError):
    """A checkpoint is missing, corrupt, or does not match the model it is loaded into."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file is damaged (truncated, unreadable, an array unlike its manifest), as
    opposed to a whole checkpoint written for another model."""


class NumericalError(SGMError, FloatingPointError):
    """A computation produced a NaN or inf (training), or a solver could not meet its tolerance
    within its step limit."""


def check_choice(what: str, value, choices) -> None:
    """A ConfigError "unknown <what> <value>; expected one of <choices>" unless `value` is one of
    `choices` (the one message every option with a fixed set of names gives)."""
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")
